"""What a box and a model can do: engine benchmarks, the environment report, MAC counts."""
