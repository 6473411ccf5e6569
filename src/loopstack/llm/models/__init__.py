"""Llama model, paged attention, GGUF weights and tokenizer for loopstack.llm."""
