"""One training run: its config, validated once (config), its parts built from the config
(build), the one training loop (loop), and atomic checkpoints to resume from (checkpoint)."""
