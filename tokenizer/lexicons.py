"""What each language of the built-in corpus can say: the word lists the synthesizer composes texts from (data)."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Lexicon:
    """What one language can say: number words, syllables and sentence parts.

    Sentences are subject + verb + object [+ ending]; every subject is third person
    singular and every object a complete phrase, so any combination is grammatical.
    """

    numbers: tuple[str, ...]     # 0..20
    tens: tuple[str, ...]        # 30, 40, ..., 100
    consonants: tuple[str, ...]  # spelled so that consonant + vowel reads as one syllable
    vowels: tuple[str, ...]
    subjects: tuple[str, ...]
    verbs: tuple[str, ...]
    objects: tuple[str, ...]
    endings: tuple[str, ...]
    seconds_per_syllable: float  # at 175 wpm, fitted on synthesized audio


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


def _phrases(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


LEXICONS: dict[str, Lexicon] = {
    "en": Lexicon(
        numbers=_words("zero one two three four five six seven eight nine ten eleven twelve "
                       "thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty"),
        tens=_phrases("thirty, forty, fifty, sixty, seventy, eighty, ninety, one hundred"),
        consonants=_words("b d g k l m n p s t f"),
        vowels=_words("ah ee oo ay"),
        subjects=_phrases("the old man, my sister, a small dog, the teacher, our neighbour, "
                          "the farmer, a young girl, the doctor, his brother, the baker, "
                          "a tired cat, the driver, her friend, the captain"),
        verbs=_words("sees finds paints carries opens wants buys cleans brings watches "
                     "draws sells keeps moves holds fixes"),
        objects=_phrases("a red door, the green box, a long letter, the heavy bag, "
                         "a cup of tea, the blue car, an empty bottle, the wooden chair, "
                         "a warm coat, the black hat, a bright lamp, the yellow ball, "
                         "a fresh loaf of bread, the silver key, a paper boat, the garden gate"),
        endings=_phrases("in the kitchen, every morning, near the river, after lunch, "
                         "on the table, at the station, before dinner, in the rain, "
                         "by the window, on a sunny day, at night, in the park"),
        seconds_per_syllable=0.165,
    ),
    "es": Lexicon(
        numbers=_words("cero uno dos tres cuatro cinco seis siete ocho nueve diez once doce "
                       "trece catorce quince dieciséis diecisiete dieciocho diecinueve veinte"),
        tens=_words("treinta cuarenta cincuenta sesenta setenta ochenta noventa cien"),
        consonants=_words("b d g k l m n p s t f"),
        vowels=_words("a e i o u"),
        subjects=_phrases("el viejo, mi hermana, un perro pequeño, la maestra, el vecino, "
                          "la granjera, una niña, el médico, su hermano, el panadero, "
                          "un gato cansado, la conductora, mi amigo, el capitán"),
        verbs=_words("ve encuentra pinta lleva abre quiere compra limpia trae mira "
                     "dibuja vende guarda mueve tiene arregla"),
        objects=_phrases("una puerta roja, la caja verde, una carta larga, la bolsa pesada, "
                         "una taza de té, el coche azul, una botella vacía, la silla de madera, "
                         "un abrigo caliente, el sombrero negro, una lámpara, la pelota amarilla, "
                         "un pan fresco, la llave de plata, un barco de papel, la puerta del jardín"),
        endings=_phrases("en la cocina, cada mañana, cerca del río, después de comer, "
                         "sobre la mesa, en la estación, antes de cenar, bajo la lluvia, "
                         "junto a la ventana, en un día de sol, por la noche, en el parque"),
        seconds_per_syllable=0.137,
    ),
    "pt": Lexicon(
        numbers=_words("zero um dois três quatro cinco seis sete oito nove dez onze doze "
                       "treze catorze quinze dezasseis dezassete dezoito dezanove vinte"),
        tens=_words("trinta quarenta cinquenta sessenta setenta oitenta noventa cem"),
        consonants=_words("b d p t m n l f v"),
        vowels=_words("á é í ó ú"),   # accented, so that every syllable is stressed, not reduced
        subjects=_phrases("o velho, a minha irmã, um cão pequeno, a professora, o vizinho, "
                          "a agricultora, uma menina, o médico, o seu irmão, o padeiro, "
                          "um gato cansado, a motorista, o meu amigo, o capitão"),
        verbs=_words("vê encontra pinta leva abre quer compra limpa traz olha "
                     "desenha vende guarda move segura arranja"),
        objects=_phrases("uma porta vermelha, a caixa verde, uma carta comprida, o saco pesado, "
                         "uma chávena de chá, o carro azul, uma garrafa vazia, a cadeira de madeira, "
                         "um casaco quente, o chapéu preto, uma lâmpada, a bola amarela, "
                         "um pão fresco, a chave de prata, um barco de papel, o portão do jardim"),
        endings=_phrases("na cozinha, todas as manhãs, perto do rio, depois do almoço, "
                         "em cima da mesa, na estação, antes do jantar, debaixo da chuva, "
                         "junto à janela, num dia de sol, à noite, no parque"),
        seconds_per_syllable=0.141,
    ),
    "de": Lexicon(
        numbers=_words("null eins zwei drei vier fünf sechs sieben acht neun zehn elf zwölf "
                       "dreizehn vierzehn fünfzehn sechzehn siebzehn achtzehn neunzehn zwanzig"),
        tens=_words("dreißig vierzig fünfzig sechzig siebzig achtzig neunzig hundert"),
        consonants=_words("b d g k l m n p s t f"),
        vowels=_words("a e i o u"),
        subjects=_phrases("der alte Mann, meine Schwester, ein kleiner Hund, die Lehrerin, "
                          "der Nachbar, die Bäuerin, ein junges Mädchen, der Arzt, sein Bruder, "
                          "der Bäcker, eine müde Katze, die Fahrerin, mein Freund, der Kapitän"),
        verbs=_words("sieht findet malt trägt öffnet will kauft putzt bringt beobachtet "
                     "zeichnet verkauft behält bewegt hält repariert"),
        objects=_phrases("eine rote Tür, die grüne Kiste, einen langen Brief, die schwere Tasche, "
                         "eine Tasse Tee, das blaue Auto, eine leere Flasche, den hölzernen Stuhl, "
                         "einen warmen Mantel, den schwarzen Hut, eine helle Lampe, den gelben Ball, "
                         "ein frisches Brot, den silbernen Schlüssel, ein Papierboot, das Gartentor"),
        endings=_phrases("in der Küche, jeden Morgen, am Fluss, nach dem Mittagessen, "
                         "auf dem Tisch, am Bahnhof, vor dem Abendessen, im Regen, "
                         "am Fenster, an einem sonnigen Tag, in der Nacht, im Park"),
        seconds_per_syllable=0.184,
    ),
}
