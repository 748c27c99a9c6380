"""The api: the HTTP gateway that turns operators' requests into typed NATS requests to the region."""
