"""video_dpo: Diffusion-DPO post-training that stacks on any flow-matching video plugin (wan2_1, stepvideo...)."""
