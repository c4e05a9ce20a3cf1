"""Models: encoders (Mix Transformer, timm backbones), the LPD head, losses and checkpoints."""
