"""MERGE (Lin et al., NeurIPS 2025): converter blocks, the Group Reuse forward over any PixArt host, the pipeline."""
