"""Staff commands: parsing, every command in English, Spanish and Portuguese, errors. Pure."""

import pytest

from maild.commands import resolve, split
from maild.decide import TicketView

T = TicketView(id=1, state="nueva", category="01", subcategory="(...) Otras cuestiones", assignee="DRIM",
               priority="normal", language="es", requester="ana@cliente.es", subject="x")


def run(settings, text, ticket=T):
    commands, rest = split(text)
    return resolve(settings, ticket, commands), rest


def changes(outcome):
    return {c.field: c.new for c in outcome.changes}


def test_split_takes_only_the_lines_at_the_top():
    commands, rest = split("\n#close\n\n#priority alta\nGracias.\n#assign DRIM\n")
    assert [c.name for c in commands] == ["close", "priority"]
    assert [c.line_no for c in commands] == [2, 4]
    assert rest == "Gracias.\n#assign DRIM"
    assert split("Hola\n#close")[0] == []
    assert split("#1 en la lista")[0] == []  # not a command word


@pytest.mark.parametrize("word", ["#status cerrada", "#estado fechada", "#ESTADO Closed", "#close", "#cerrar",
                                  "#fechar", "#Cerrar"])
def test_closing_in_every_language(settings, word):
    out, _ = run(settings, word)
    assert changes(out) == {"state": "cerrada"} and out.explicit_state


@pytest.mark.parametrize("word", ["#status en_curso", "#estado en curso", "#estado em curso",
                                  "#status in progress", "#status En Curso"])
def test_in_progress_words(settings, word):
    assert changes(run(settings, word)[0]) == {"state": "en_curso"}


@pytest.mark.parametrize("word", ["#reopen", "#reabrir", "#REABRIR"])
def test_reopen(settings, word):
    closed = TicketView(**{**T.__dict__, "state": "cerrada"})
    assert changes(run(settings, word, closed)[0]) == {"state": "en_curso"}
    assert run(settings, word)[0].errors  # not closed


@pytest.mark.parametrize("word", ["#assign soporte de tecnologia", "#asignar SOPORTE DE TECNOLOGÍA",
                                  "#atribuir Soporte De Tecnología"])
def test_assign(settings, word):
    assert changes(run(settings, word)[0]) == {"assignee": "SOPORTE DE TECNOLOGÍA"}


@pytest.mark.parametrize("word", ["#category 04", "#categoria 04", "#categoría 04", "#CATEGORIA 04."])
def test_category_resets_subcategory(settings, word):
    assert changes(run(settings, word)[0]) == {"category": "04",
                                               "subcategory": "(...) Otras cuestiones de tecnología"}


@pytest.mark.parametrize("text", [
    "#category 04\n#subcategory centro de descargas",
    "#categoria 04\n#subcategoria Problemas com o Centro",       # Portuguese name
    "#categoría 04\n#subcategoría download centre",            # English name
])
def test_subcategory_by_substring_in_any_language(settings, text):
    assert changes(run(settings, text)[0])["subcategory"] == "Problemas con Centro de Descargas"


def test_subcategory_must_match_exactly_one(settings):
    out, _ = run(settings, "#category 04\n#subcategory desarrollo")
    assert out.errors and "matches 2 subcategories" in out.errors[0]
    assert "Desarrollo Servicios Web (WWSS)" in out.errors[0]
    out, _ = run(settings, "#subcategory tecnologia")
    assert out.errors and "matches no subcategory of category 01" in out.errors[0]


@pytest.mark.parametrize(("word", "value"), [("#priority alta", "alta"), ("#prioridad urgente", "urgente"),
                                             ("#prioridade baixa", "baja"), ("#priority high", "alta")])
def test_priority(settings, word, value):
    assert changes(run(settings, word)[0]) == {"priority": value}


@pytest.mark.parametrize(("word", "value"), [("#lang pt", "pt"), ("#idioma en", "en"), ("#lingua es", "es"),
                                             ("#língua português", "pt")])
def test_language(settings, word, value):
    out = run(settings, word, TicketView(**{**T.__dict__, "language": "fr"}))[0]
    assert changes(out) == {"language": value}


@pytest.mark.parametrize("word", ["#internal", "#interna", "#interno"])
def test_internal(settings, word):
    assert run(settings, word)[0].internal


@pytest.mark.parametrize(("word", "field"), [("#watch jefe@cliente.es", "watch"),
                                             ("#observar jefe@cliente.es", "watch"),
                                             ("#monitorizar <Jefe@Cliente.es>", "watch"),
                                             ("#unwatch jefe@cliente.es", "unwatch"),
                                             ("#dejar jefe@cliente.es", "unwatch"),
                                             ("#deixar jefe@cliente.es", "unwatch")])
def test_watchers(settings, word, field):
    assert getattr(run(settings, word)[0], field) == ("jefe@cliente.es",)


@pytest.mark.parametrize(("text", "fragment"), [
    ("#status abierta-ish", "unknown state. Valid: nueva, en_curso, cerrada"),
    ("#assign NADIE", "no such group. Valid: DRIM, REGISTRO DE AGENTES"),
    ("#category 99", "no such category. Valid: 01 Información general"),
    ("#priority máxima", "unknown priority. Valid: baja, normal, alta, urgente"),
    ("#lang fr", "unknown language. Valid: es, pt, en"),
    ("#watch nobody", "is not an e-mail address"),
    ("#close now", "takes no argument"),
    ("#assign", "needs an argument"),
    ("#frobnicate", "unknown command. Valid commands: #status, #close"),
])
def test_errors_quote_the_line_and_list_what_is_valid(settings, text, fragment):
    out, _ = run(settings, text)
    assert len(out.errors) == 1
    assert f"line 1: {text!r}" in out.errors[0] and fragment in out.errors[0]
    assert out.changes == ()


def test_all_or_nothing(settings):
    out, _ = run(settings, "#priority alta\n#assign NADIE\n#close")
    assert out.errors and out.changes == ()


def test_later_commands_see_earlier_ones_and_no_op_changes_vanish(settings):
    out, _ = run(settings, "#priority normal\n#category 04\n#subcategory comunicaciones")
    assert changes(out) == {"category": "04", "subcategory": "Comunicaciones y ciberseguridad"}
    # category then back: net change only
    out, _ = run(settings, "#category 04\n#category 01")
    assert changes(out) == {}
