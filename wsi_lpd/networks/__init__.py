"""Networks shared by training and inference: encoders (Mix Transformer, timm backbones), the LPD
head, the HisynSeg network, patch prediction and the ``model.pt`` checkpoint contract.
"""
