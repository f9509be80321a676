"""PyTorch reference implementations used to generate golden fixtures and to train the default model."""
