"""UniPC (Zhao et al. 2023): being written (issue 15); registers its samplers when done."""
