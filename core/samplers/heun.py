"""Heun's second-order method (Karras et al. 2022, Algorithm 1): being written (issue 15); registers its samplers when done."""
