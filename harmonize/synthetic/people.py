"""Fake names and addresses: English for the US-style sites, French (accented, latin-1 safe) for site C."""

from __future__ import annotations

import random

ENGLISH_FIRST_MALE = (
    "James", "Robert", "John", "Michael", "David", "William", "Richard", "Joseph", "Thomas", "Charles",
    "Daniel", "Matthew", "Anthony", "Mark", "Donald", "Steven", "Paul", "Andrew", "Joshua", "Kenneth",
    "José", "Luis", "Chen", "Hiroshi", "Kwame",
)  # fmt: skip
ENGLISH_FIRST_FEMALE = (
    "Mary", "Patricia", "Jennifer", "Linda", "Elizabeth", "Barbara", "Susan", "Jessica", "Sarah", "Karen",
    "Lisa", "Nancy", "Betty", "Margaret", "Sandra", "Ashley", "Dorothy", "Kimberly", "Emily", "Donna",
    "María", "Sofía", "Mei", "Yuki", "Amara",
)  # fmt: skip
ENGLISH_LAST = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodríguez", "Martinez",
    "Hernández", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor", "Moore", "Jackson", "Martin",
    "Lee", "Pérez", "Thompson", "White", "Harris", "Sánchez", "Clark", "Ramírez", "Lewis", "Robinson",
    "Nguyen", "O'Brien", "Kim", "Patel", "Okafor",
)  # fmt: skip
ENGLISH_STREETS = ("Main St", "Oak Ave", "Maple Dr", "Cedar Ln", "Pine St", "Elm St", "Lakeview Rd", "Hillcrest Blvd")
ENGLISH_CITIES = (("Springfield", "62701"), ("Riverside", "92501"), ("Fairview", "37062"), ("Madison", "53703"))

FRENCH_FIRST_MALE = (
    "Jérôme", "Loïc", "Théo", "François", "Hervé", "Benoît", "Gaël", "Jean-Hélie", "Raphaël", "Noël",
    "André", "Éric", "Cédric", "Stéphane", "Frédéric", "Mathéo", "Joël", "Rémi", "Hugues", "Aurélien",
)  # fmt: skip
FRENCH_FIRST_FEMALE = (
    "Hélène", "Françoise", "Zoé", "Gaëlle", "Chloé", "Mélanie", "Thérèse", "Anaïs", "Léa", "Bénédicte",
    "Agnès", "Céline", "Inès", "Maëlle", "Noémie", "Geneviève", "Édith", "Océane", "Solène", "Renée",
)  # fmt: skip
FRENCH_LAST = (
    "Lefèvre", "Bénard", "Müller", "Rousseau", "Caré", "Dupré", "Lemaître", "Chéreau", "Gaillard", "Fabré",
    "Noël", "Bourgès", "Lévêque", "Hébert", "Béranger", "Mercier", "Desprès", "Barthélemy", "Vallée", "Garçon",
)  # fmt: skip
FRENCH_STREETS = (
    "rue de l'Église", "allée des Châtaigniers", "boulevard Gambetta", "rue du Général-Leclerc",
    "place de la Libération", "chemin des Prés", "avenue Jean-Jaurès", "impasse des Pâquerettes",
)  # fmt: skip
FRENCH_CITIES = (("Besançon", "25000"), ("Orléans", "45000"), ("Nîmes", "30000"), ("Saint-Étienne", "42000"))


def english_identity(rnd: random.Random, male: bool) -> tuple[str, str, str, str, str]:
    """(first, last, street, city, postcode) in the style of a US hospital."""
    first = rnd.choice(ENGLISH_FIRST_MALE if male else ENGLISH_FIRST_FEMALE)
    city, postcode = rnd.choice(ENGLISH_CITIES)
    street = f"{rnd.randint(1, 9999)} {rnd.choice(ENGLISH_STREETS)}"
    return first, rnd.choice(ENGLISH_LAST), street, city, postcode


def french_identity(rnd: random.Random, male: bool) -> tuple[str, str, str, str, str]:
    """(first, last, street, city, postcode) with accented names (all encodable in latin-1)."""
    first = rnd.choice(FRENCH_FIRST_MALE if male else FRENCH_FIRST_FEMALE)
    city, postcode = rnd.choice(FRENCH_CITIES)
    street = f"{rnd.randint(1, 120)}, {rnd.choice(FRENCH_STREETS)}"
    return first, rnd.choice(FRENCH_LAST), street, city, postcode
