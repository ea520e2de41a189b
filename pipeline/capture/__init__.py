"""The camera side: sources, the camera process, preprocessing, the shared-memory ring, supervision."""
