"""The ML Engine's language: its client, webhook signatures and event formats, and the simulator."""
