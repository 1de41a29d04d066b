"""StepVideo text-to-video and text-image-to-video (stepfun-ai's Step-Video-T2V and Step-Video-TI2V)."""
