"""The client's server-sent events decoder, fed the way the results API writes."""

from tessera_client.sse import ServerEvent, SSEDecoder


def _decode(text: str) -> tuple[list[ServerEvent], SSEDecoder]:
    decoder = SSEDecoder()
    events = [event for line in text.split("\n") if (event := decoder.feed(line))]
    return events, decoder


def test_decoder_yields_typed_events_with_their_ids() -> None:
    events, decoder = _decode(
        'id: 1-0\nevent: status\ndata: {"status": "queued"}\n\n'
        ': keep-alive\n\n'
        'id: 2-0\nevent: output\ndata: {"delta": "a cat"}\n\n')
    assert [(e.id, e.event, e.json()) for e in events] == [
        ("1-0", "status", {"status": "queued"}), ("2-0", "output", {"delta": "a cat"})]
    assert decoder.last_event_id == "2-0"


def test_decoder_joins_data_lines_and_defaults_the_type_to_message() -> None:
    events, _ = _decode("data: first\ndata:second\n\n")
    assert events == [ServerEvent("message", "first\nsecond", None)]


def test_decoder_waits_for_the_blank_line_before_dispatching() -> None:
    events, decoder = _decode("id: 7-0\nevent: status\ndata: {}")
    assert events == []
    assert decoder.feed("") == ServerEvent("status", "{}", "7-0")


def test_decoder_keeps_the_id_of_an_event_without_data_and_reads_retry() -> None:
    events, decoder = _decode("id: 9-0\nretry: 2500\n\nretry: soon\n\n")
    assert events == []
    assert decoder.last_event_id == "9-0" and decoder.retry_ms == 2500


def test_decoder_ignores_unknown_fields_and_keeps_colons_in_values() -> None:
    events, _ = _decode("foo: bar\ndata: a: b\n\n")
    assert events == [ServerEvent("message", "a: b", None)]
