"""Channel adapters: one module per transport, all implementing `channels.base.Channel`."""
