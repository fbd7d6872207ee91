"""Recorder metadata: RIFF chunks, AudioMoth comments (every firmware), GUANO, file names.

``read_metadata(path)`` merges them (GUANO > comment > IART > file name) into one ``RecordingMetadata``.
"""

from monitor.metadata.audiomoth import format_comment, parse_audiomoth_comment
from monitor.metadata.filenames import parse_filename
from monitor.metadata.guano import parse_guano
from monitor.metadata.record import RecordingMetadata, read_metadata
from monitor.metadata.riff import RiffInfo, walk_riff, write_wav_with_chunks

__all__ = ["RecordingMetadata", "RiffInfo", "format_comment", "parse_audiomoth_comment", "parse_filename",
           "parse_guano", "read_metadata", "walk_riff", "write_wav_with_chunks"]
