"""The words of the web pages, in Spanish, Portuguese and English."""

from __future__ import annotations

TEXT: dict[str, dict[str, str]] = {
    "site": {"es": "Ayuda y Soporte", "pt": "Ajuda e Suporte", "en": "Help and Support"},
    "tagline": {"es": "Encuentre la respuesta antes de escribirnos.",
                "pt": "Encontre a resposta antes de nos escrever.",
                "en": "Find the answer before you write to us."},
    "search": {"es": "Buscar", "pt": "Pesquisar", "en": "Search"},
    "search_label": {"es": "Buscar en la ayuda", "pt": "Pesquisar na ajuda", "en": "Search the help"},
    "search_placeholder": {"es": "Por ejemplo: certificado digital", "pt": "Por exemplo: certificado digital",
                           "en": "For example: digital certificate"},
    "categories": {"es": "Categorías", "pt": "Categorias", "en": "Categories"},
    "articles": {"es": "artículos", "pt": "artigos", "en": "articles"},
    "no_articles": {"es": "Todavía no hay artículos.", "pt": "Ainda não há artigos.", "en": "No articles yet."},
    "tags": {"es": "Etiquetas", "pt": "Etiquetas", "en": "Tags"},
    "related": {"es": "Artículos relacionados", "pt": "Artigos relacionados", "en": "Related articles"},
    "tagged": {"es": "{n} artículos con la etiqueta {tag}", "pt": "{n} artigos com a etiqueta {tag}",
               "en": "{n} articles tagged {tag}"},
    "tagged_one": {"es": "1 artículo con la etiqueta {tag}", "pt": "1 artigo com a etiqueta {tag}",
                   "en": "1 article tagged {tag}"},
    "results": {"es": "{n} resultados para «{q}»", "pt": "{n} resultados para «{q}»",
                "en": "{n} results for “{q}”"},
    "no_results": {"es": "Nada encontrado para «{q}». Pruebe con otras palabras o escríbanos.",
                   "pt": "Nada encontrado para «{q}». Experimente outras palavras ou escreva-nos.",
                   "en": "Nothing found for “{q}”. Try other words, or write to us."},
    "contact": {"es": "Contacto", "pt": "Contacto", "en": "Contact"},
    "contact_intro": {
        "es": "¿No encuentra la respuesta? Escriba a la dirección de la categoría de su consulta.",
        "pt": "Não encontra a resposta? Escreva para o endereço da categoria da sua consulta.",
        "en": "Can't find the answer? Write to the address of your question's category."},
    "contact_next": {
        "es": "Recibirá enseguida un aviso con el número de su consulta. Nuestro equipo le responderá por "
              "correo; responda a cualquiera de nuestros mensajes para añadir información.",
        "pt": "Receberá de imediato um aviso com o número da sua consulta. A nossa equipa responderá por "
              "correio eletrónico; responda a qualquer mensagem nossa para acrescentar informação.",
        "en": "You will get a notice with your request number right away. Our team answers by e-mail; "
              "reply to any of our messages to add information."},
    "write": {"es": "Escribir", "pt": "Escrever", "en": "Write"},
    "mail_subject": {"es": "Consulta", "pt": "Consulta", "en": "Question"},
    "fallback": {"es": "Este artículo no está disponible en español; se muestra en {other}.",
                 "pt": "Este artigo não está disponível em português; é mostrado em {other}.",
                 "en": "This article is not available in English; it is shown in {other}."},
    "language": {"es": "Idioma", "pt": "Idioma", "en": "Language"},
    "lang_name_es": {"es": "español", "pt": "espanhol", "en": "Spanish"},
    "lang_name_pt": {"es": "portugués", "pt": "português", "en": "Portuguese"},
    "lang_name_en": {"es": "inglés", "pt": "inglês", "en": "English"},
    "not_found": {"es": "Página no encontrada", "pt": "Página não encontrada", "en": "Page not found"},
    "not_found_text": {"es": "La página que busca no existe o se ha movido.",
                       "pt": "A página que procura não existe ou foi movida.",
                       "en": "The page you are looking for does not exist or has moved."},
    "error": {"es": "Algo ha fallado", "pt": "Algo correu mal", "en": "Something went wrong"},
    "error_text": {"es": "Inténtelo de nuevo dentro de un momento.", "pt": "Tente novamente daqui a pouco.",
                   "en": "Please try again in a moment."},
    "home": {"es": "Inicio", "pt": "Início", "en": "Home"},
    "skip": {"es": "Saltar al contenido", "pt": "Saltar para o conteúdo", "en": "Skip to content"},
}


def t(key: str, lang: str, **kw: object) -> str:
    value = TEXT[key].get(lang) or TEXT[key]["es"]
    return value.format(**kw) if kw else value
