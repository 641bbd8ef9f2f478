"""Embedded data for the text example: stop words per language and small labelled sentence sets.

Everything the models learn from is here, so the example needs no download.
"""

from __future__ import annotations

__all__ = ["LANGUAGES", "STOP_WORDS", "TRAINING"]

LANGUAGES = ("en", "de", "fr", "es")

# Frequent function words; words two languages share (e.g. "la", "de") count for both.
STOP_WORDS: dict[str, frozenset[str]] = {
    "en": frozenset(
        "the and is a an of to it this that was i you not in for with very but my on are have so".split()
    ),
    "de": frozenset(
        "der die das und ist nicht ein eine ich es sehr mit zu war aber auch den dem ein mein sind hat so".split()
    ),
    "fr": frozenset(
        "le la les et est un une je ne pas très de du ce cette mais il elle était mon sont pour avec".split()
    ),
    "es": frozenset(
        "el la los las y es un una muy no de que en pero lo me mi fue esta este son para con".split()
    ),
}

# (sentence, 1 = positive / 0 = negative); a few dozen per language is enough for a word model.
TRAINING: dict[str, list[tuple[str, int]]] = {
    "en": [
        ("I love this film, the acting is wonderful", 1),
        ("What a great and moving story", 1),
        ("The food was delicious and the staff friendly", 1),
        ("Excellent service, I am very happy", 1),
        ("This is the best book I have read this year", 1),
        ("A beautiful, funny and clever show", 1),
        ("I really enjoyed it, highly recommended", 1),
        ("The hotel was clean, quiet and perfect", 1),
        ("Fantastic value, it works great", 1),
        ("My kids loved it, a lovely day out", 1),
        ("Brilliant music and a superb cast", 1),
        ("Fast delivery and the quality is good", 1),
        ("I hate this film, the acting is terrible", 0),
        ("What a boring and predictable story", 0),
        ("The food was cold and the staff rude", 0),
        ("Awful service, I am very disappointed", 0),
        ("This is the worst book I have read this year", 0),
        ("An ugly, dull and stupid show", 0),
        ("I did not enjoy it, a waste of money", 0),
        ("The hotel was dirty, noisy and horrible", 0),
        ("Poor value, it broke after a day", 0),
        ("My kids hated it, a miserable day out", 0),
        ("Bad music and a weak cast", 0),
        ("Slow delivery and the quality is bad", 0),
    ],
    "de": [
        ("Ich liebe diesen Film, die Schauspieler sind wunderbar", 1),
        ("Eine tolle und bewegende Geschichte", 1),
        ("Das Essen war lecker und das Personal freundlich", 1),
        ("Ausgezeichneter Service, ich bin sehr zufrieden", 1),
        ("Das ist das beste Buch des Jahres", 1),
        ("Eine schöne, lustige und kluge Sendung", 1),
        ("Es hat mir sehr gefallen, absolut empfehlenswert", 1),
        ("Das Hotel war sauber, ruhig und perfekt", 1),
        ("Super Preis, es funktioniert prima", 1),
        ("Die Kinder waren begeistert, ein herrlicher Tag", 1),
        ("Ich hasse diesen Film, die Schauspieler sind schrecklich", 0),
        ("Eine langweilige und vorhersehbare Geschichte", 0),
        ("Das Essen war kalt und das Personal unfreundlich", 0),
        ("Furchtbarer Service, ich bin sehr enttäuscht", 0),
        ("Das ist das schlechteste Buch des Jahres", 0),
        ("Eine hässliche, öde und dumme Sendung", 0),
        ("Es hat mir nicht gefallen, reine Geldverschwendung", 0),
        ("Das Hotel war schmutzig, laut und schrecklich", 0),
        ("Schlechter Preis, es war nach einem Tag kaputt", 0),
        ("Die Kinder waren gelangweilt, ein furchtbarer Tag", 0),
    ],
    "fr": [
        ("J'adore ce film, les acteurs sont merveilleux", 1),
        ("Une histoire formidable et émouvante", 1),
        ("Le repas était délicieux et le personnel aimable", 1),
        ("Excellent service, je suis très content", 1),
        ("C'est le meilleur livre de l'année", 1),
        ("Un spectacle beau, drôle et intelligent", 1),
        ("J'ai beaucoup aimé, je le recommande vivement", 1),
        ("L'hôtel était propre, calme et parfait", 1),
        ("Très bon rapport qualité prix, ça marche bien", 1),
        ("Les enfants ont adoré, une journée magnifique", 1),
        ("Je déteste ce film, les acteurs sont nuls", 0),
        ("Une histoire ennuyeuse et prévisible", 0),
        ("Le repas était froid et le personnel désagréable", 0),
        ("Service horrible, je suis très déçu", 0),
        ("C'est le pire livre de l'année", 0),
        ("Un spectacle laid, lent et stupide", 0),
        ("Je n'ai pas aimé, de l'argent perdu", 0),
        ("L'hôtel était sale, bruyant et affreux", 0),
        ("Mauvais rapport qualité prix, cassé après un jour", 0),
        ("Les enfants se sont ennuyés, une journée affreuse", 0),
    ],
    "es": [
        ("Me encanta esta película, los actores son maravillosos", 1),
        ("Una historia genial y emocionante", 1),
        ("La comida estaba deliciosa y el personal amable", 1),
        ("Servicio excelente, estoy muy contento", 1),
        ("Es el mejor libro del año", 1),
        ("Un espectáculo bonito, divertido e inteligente", 1),
        ("Me gustó mucho, lo recomiendo totalmente", 1),
        ("El hotel estaba limpio, tranquilo y perfecto", 1),
        ("Buena relación calidad precio, funciona muy bien", 1),
        ("A los niños les encantó, un día estupendo", 1),
        ("Odio esta película, los actores son horribles", 0),
        ("Una historia aburrida y previsible", 0),
        ("La comida estaba fría y el personal antipático", 0),
        ("Servicio terrible, estoy muy decepcionado", 0),
        ("Es el peor libro del año", 0),
        ("Un espectáculo feo, lento y tonto", 0),
        ("No me gustó nada, dinero perdido", 0),
        ("El hotel estaba sucio, ruidoso y horrible", 0),
        ("Mala relación calidad precio, se rompió en un día", 0),
        ("Los niños se aburrieron, un día horrible", 0),
    ],
}
