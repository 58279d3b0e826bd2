"""The synthetic generator's vocabulary: genres (title words, query-only descriptors, typical
maturity), common title words and name syllables."""

from __future__ import annotations

# name, typical maturity index, query-only descriptors (no title contains them), title words
_GENRE_TABLE: tuple[tuple[str, int, str, str], ...] = (
    (
        "action",
        3,
        "explosive fights",
        "strike fury bullet mission force impact chase rogue vengeance fire target blast "
        "agent steel rampage havoc",
    ),
    (
        "adventure",
        1,
        "exploring epic",
        "quest island treasure journey lost jungle voyage expedition temple map summit "
        "compass horizon wild odyssey trail",
    ),
    (
        "animation",
        0,
        "animated cartoon",
        "toon bunny magic kitten dragon bubble rainbow robot pixel doodle sprout giggle "
        "wobble meadow candy puppet",
    ),
    (
        "comedy",
        2,
        "funny hilarious",
        "laugh party wedding roommates prank awkward vacation silly oops chaos neighbors "
        "dude bachelor hangover goofy blunder",
    ),
    (
        "crime",
        3,
        "criminal police",
        "heist mob gangster detective alibi verdict cartel vault witness undercover "
        "ransom syndicate felony hustle racket badge",
    ),
    (
        "documentary",
        0,
        "docuseries factual",
        "planet ocean inside truth story nature wildlife frontier making science portrait "
        "archive climate empire origins investigation",
    ),
    (
        "drama",
        2,
        "emotional moving",
        "letters silence daughter promise river winter home memory broken family grace "
        "tears bridge legacy season honor",
    ),
    (
        "fantasy",
        2,
        "magical sorcery",
        "kingdom sword wizard realm crown elf prophecy throne enchanted sorcerer "
        "dragonfire rune spell crystal oracle myth",
    ),
    (
        "horror",
        4,
        "scary creepy",
        "haunting blood shadow curse ghost demon grave scream possession cellar ritual "
        "nightmare coven crypt hollow evil",
    ),
    (
        "mystery",
        2,
        "whodunit sleuth",
        "secret clue vanishing riddle manor cipher puzzle whisper enigma disappearance "
        "motive suspect locked trace hidden key",
    ),
    (
        "romance",
        2,
        "romantic lovestory",
        "love heart kiss paris summer forever sweetheart romeo valentine honeymoon crush "
        "darling desire serenade bride soulmate",
    ),
    (
        "scifi",
        2,
        "space futuristic",
        "galaxy star android orbit quantum mars cyborg nebula colony warp signal machine "
        "future clone cosmos starship",
    ),
    (
        "sports",
        1,
        "athletes tournament",
        "champion goal match league coach underdog victory stadium rookie final team "
        "boxer marathon playoff comeback ring",
    ),
    (
        "thriller",
        3,
        "suspense tense",
        "conspiracy hostage stalker fugitive deadline trap escape paranoia spy cover "
        "blackout betrayal pursuit agenda decoy countdown",
    ),
    (
        "war",
        3,
        "military wartime",
        "battle soldier platoon front trench siege bomber regiment fortress command "
        "allies sniper invasion general medal beachhead",
    ),
    (
        "western",
        2,
        "cowboy westerns",
        "outlaw sheriff frontier saloon gunslinger ranch desert bounty canyon posse "
        "stallion prairie rustler marshal dust revolver",
    ),
    (
        "music",
        1,
        "musical concertfilm",
        "song band melody rhythm concert tour ballad encore jazz stage anthem chorus "
        "vinyl groove diva rockstar",
    ),
    (
        "family",
        0,
        "kids wholesome",
        "puppy grandpa holiday camp twins backyard treehouse christmas pony picnic "
        "sleepover cousins snowday fairground babysitter scouts",
    ),
    (
        "history",
        2,
        "historical period",
        "emperor dynasty revolution pharaoh ancient crusade pioneer queen chronicle reign "
        "rebellion colonial medieval victorian samurai viking",
    ),
    (
        "reality",
        1,
        "unscripted realityshow",
        "island house bake dating makeover challenge survivor talent kitchen flip swap "
        "rich real housewives contest bootcamp",
    ),
)
GENRES: dict[str, tuple[tuple[str, ...], tuple[str, ...], int]] = {
    name: (tuple(words.split()), tuple(descriptors.split()), maturity)
    for name, maturity, descriptors, words in _GENRE_TABLE
}
"""genre -> (title words, query-only descriptors, typical maturity index)."""

# fmt: off
COMMON_WORDS: tuple[str, ...] = (
    "the", "of", "night", "last", "return", "rise", "city", "dark", "day", "world", "one", "first",
    "blue", "red", "golden", "little", "big", "new", "old", "girl", "boy", "man", "woman", "king",
    "road", "sky", "moon", "sun", "edge", "heart", "light", "time", "house", "game", "code", "line",
    "end", "beyond", "west", "north"
)
# fmt: on


TITLE_STYLES: tuple[str, ...] = ("words", "names")
# fmt: off
NAME_SYLLABLES: tuple[str, ...] = (
    "ka", "ro", "mi", "za", "lu", "ven", "dor", "shi", "ta", "bel", "qui", "nox", "ar", "el", "fi",
    "gor", "ha", "jin", "ko", "ly", "mor", "ny", "pa", "rei", "sol", "tu", "vo", "wen", "xa", "yu",
    "zel", "bri", "cra", "dre", "fla", "glo", "kri", "plo", "sta", "tro",
)
# fmt: on
