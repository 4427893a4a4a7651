"""Training on accelerate: the official recipes of MERGE, DMP and JointNet, data, loop, logs."""
