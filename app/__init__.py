"""Letter-writing campaign service: petitions, appeal letters and a durable mail outbox."""
