"""medrl: reinforcement-learning post-training of medical vision-language models on verl."""

__version__ = "0.1.0"
