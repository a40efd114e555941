"""The paper's proposal network: MaskFormer in plain PyTorch with a CLIP text-space class head.

backbone.py (ResNet, deep stem), pixel_decoder.py (FPN), transformer_decoder.py (queries),
model.py (assembly, non-object embedding), checkpoint.py (project and reference formats),
learned_prompts.py (text embeddings through learned prompt vectors), criterion.py (training
loss), zero_shot.py (network vs CLIP vs ensemble). The proposal generator built on it is
proposals/maskformer.py.
"""
