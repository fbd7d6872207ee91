"""Recorder metadata: RIFF chunks, AudioMoth comments (every firmware), GUANO, file names."""

from monitor.metadata.record import RecordingMetadata, read_metadata

__all__ = ["RecordingMetadata", "read_metadata"]
