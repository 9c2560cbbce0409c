"""Audio -> log-mel -> VQ-VAE tokens: corpora, features, the tokenizer model and its CLI."""
