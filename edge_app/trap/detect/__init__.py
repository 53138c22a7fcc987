"""Model card loading, runtime, decoders and the detection pipeline."""
