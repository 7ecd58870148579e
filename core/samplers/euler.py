"""Euler and Euler ancestral (Karras et al. 2022): being written (issue 15); registers its samplers when done."""
