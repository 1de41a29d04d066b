"""transformers' InternVL trained through mm: a ModelHub-style loader and the FSDP2 plan, as an mm plugin."""
