"""What crosses a socket: the message contract, ZeroMQ publish/subscribe and relay, CURVE keys, MQTT."""
