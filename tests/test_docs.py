"""The generated docs equal what their generators write today (python -m esmsae.docs): docs/cli.md from
the parser, docs/demo.md from the committed bundle, the layout in docs/reference.md from the packages."""
from esmsae.docs import generated


def test_generated_docs_are_current():
    stale = [str(path.name) for path, text in generated().items() if path.read_text() != text]
    assert not stale, f"{stale} differ from what the code and the bundle say: run python -m esmsae.docs"
