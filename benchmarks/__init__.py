"""Speed and quality measurements for Diffusion Studio (not part of the test run).

digit_classifier: a small CNN that judges generated digits; score: the sample scorer
(confidence, class entropy, Fréchet distance); time_to_quality: train under a wall-clock
budget, sample, score, side by side with a diffusers reference model.
"""
