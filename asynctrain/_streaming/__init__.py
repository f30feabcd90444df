"""Streaming: sources → bounded queue → ring of batch buffers → the trainer's stream steps."""
