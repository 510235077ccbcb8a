//! UCI configuration (`/etc/config/bpfqos`): parsing and validation into typed settings.
