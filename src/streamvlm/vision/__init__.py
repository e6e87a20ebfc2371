"""The vision side: ViT encoder, frame sampling, VisionStage and its worker."""
