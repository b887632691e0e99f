"""The run folder's record of truth as data: the trace file's format, shared by its writer and readers.

`events` is the validating parser of one trace line (the pydantic event models);
`trace_file` names the file and reads it. The writer (`autoprune.agent.trace`) sits
above and imports both; reports, replay and resume read through them (docs/trace.md).
"""
