"""OpenSoraPlan 1.3: the sparse video DiT (Skiparse), WF-VAE, mT5 and DDPM v-prediction, text- and image-to-video."""
