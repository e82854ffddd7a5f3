"""Export to other tools: Neuronpedia and circuit-tracer's viewer (`aimri export`)."""
