"""DPM-Solver++ 2M and 2M SDE (Lu et al. 2022): being written (issue 15); registers its samplers when done."""
