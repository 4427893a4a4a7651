"""Files in and out of the models: checkpoints (safe loading, key checks, folders), prompt embeddings, image sizes."""
