"""Generative models: Llama-architecture decoders on ONNX Runtime with continuous batching,
served over the OpenAI API and KServe v2 generate on the backend's own process."""
