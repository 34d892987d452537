"""Meta's Conversions API Gateway: the client that posts events to a Gateway, and its fake."""
