"""The bench: a harness of worker processes (harness.py), U-Net latency (`ms-ddpm bench`), sample quality (`ms-ddpm quality`)."""
