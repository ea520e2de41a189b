"""Post-training quantisation (INT8/FP8) and the accuracy gate for quantised engines."""
