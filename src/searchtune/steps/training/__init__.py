"""The fine-tune step's parts: checkpoints a preempted pod resumes from, and warm starts from a registered version."""
