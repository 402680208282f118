"""The ML Engine's language: its client, webhook signatures and event formats, webhook processing, outbox, alerts."""
