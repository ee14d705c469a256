"""A Cerebras- and OpenAI-compatible Chat Completions server for Llama 3.1 on vLLM."""
