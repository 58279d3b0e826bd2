"""A seeded generator of a synthetic streaming catalogue and its logs, in the canonical format.

The generative story, chosen so that each task has signal beyond popularity:

* Items and users live in a latent taste space built from genre centroids; an item's genres and
  its title words follow its position there, so content features are informative.
* A user's taste drifts over the log's time span, so recent history says more than an old profile.
* Every engagement picks an item with probability ~ popularity x exp(strength x affinity), drawn
  by sampling a popularity-weighted pool and taking a Gumbel-max over affinities (fast, and still
  heavy-tailed). Affinity is task specific: user taste (+ freshness) for notifications, anchor
  similarity + taste for related items, taste within the clicked row for categories, taste for
  the item a search was looking for.
* Search queries are written from the sought item: a title word, two title words, or a genre
  descriptor that no title contains, so lexical lookup alone is not always enough.

Generation is vectorised numpy and deterministic per (config, seed).

One room of one concern although just over 500 lines: one generative story, the latent world and
the events drawn from it, which share its state (tastes, popularity, freshness) and one random
stream whose order fixes every output. Its vocabulary is data, apart in synthetic_words.py;
writing the result is logwriter.py's. Splitting the world from its events would hand that state
across modules and make the draw order harder to see, for no reader's gain.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from unirank.training.logs import EventTable, EventType, ItemTable, LogData, TextTable
from unirank.training.synthetic_words import COMMON_WORDS, GENRES, NAME_SYLLABLES, TITLE_STYLES

DAY_MS = 86_400_000
SCORE_EVERY_ITEM_MAX = 20_000
"""Up to this many items, affinities are a product with every item (the presets' way)."""
LOG_START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z: a fixed origin keeps runs reproducible


@dataclass(frozen=True)
class SyntheticConfig:
    """Size and strength knobs of the generator; presets via :meth:`preset`."""

    n_items: int = 3000
    n_users: int = 3000
    n_genres: int = 16
    """At most len(GENRES)."""
    latent_dim: int = 16
    plays_per_user: float = 30.0
    """Mean plays per user (log-normal activity, so some users are far more active)."""
    notifications_per_user: float = 6.0
    related_per_user: float = 8.0
    searches_per_user: float = 8.0
    category_clicks_per_user: float = 8.0
    days: int = 120
    pool_size: int = 128
    """Popularity-sampled candidates per play before the taste-driven choice."""
    click_pool_size: int = 256
    """The same for clicks; larger pools let taste and anchor similarity weigh more against popularity."""
    popularity_sigma: float = 1.3
    """Log-normal spread of item popularity (heavy tail)."""
    taste_strength: float = 7.0
    anchor_strength: float = 9.0
    related_taste_share: float = 1.0
    """Weight of the user's own taste in related clicks, relative to ``taste_strength``."""
    item_noise: float = 0.7
    """How far items stray from their genres' centroid (within-genre variety)."""
    taste_drift: float = 0.4
    title_words_per_genre: int = 16
    """Distinct title words per genre (at most 16); fewer make each query word match more titles."""
    query_mix: tuple[float, float, float] = (0.5, 0.15, 0.35)
    """Shares of search queries that are one title word, two title words, or a genre descriptor."""
    play_after_click: float = 0.5
    """Share of clicks followed by a play of the clicked item (so clicks enter later histories)."""
    surface_events: bool = True
    """Log notification opens, related, search and category clicks; False: plays (and tags) only,
    so every label is derived from engagements, as with MovieLens or a listening history."""
    time_granularity_days: int = 0
    """Round every timestamp down to whole days of this many (0: millisecond times)."""
    release_years: bool = True
    """Give items release years; False: none is known (so no item is ever a new release)."""
    title_style: str = "words"
    """``words``: titles from genre and common words; ``names``: made-up names (artists) that
    say nothing about the content and rarely share a word, so user tags are the only text."""
    tags_per_user: float = 0.0
    """Mean tags a user attaches to items they played (a genre name or descriptor); 0: none."""
    play_weights: bool = False
    """Plays carry a count (log-normal, like scrobbles) as their weight instead of 1."""

    @classmethod
    def preset(cls, size: str) -> SyntheticConfig:
        """``tiny`` (tests, seconds), ``small`` or ``default``."""
        presets = {
            "tiny": cls(
                n_items=400,
                n_users=400,
                n_genres=10,
                plays_per_user=20.0,
                pool_size=100,
                click_pool_size=150,
                # A small catalogue still needs query words that match many titles.
                title_words_per_genre=8,
            ),
            "small": cls(n_items=1500, n_users=1500, n_genres=14),
            "default": cls(),
            # A listening history unlike the default: ~1.1k users, ~10k artists, ~40k plays; no
            # surface events, day-granularity times, no release years, tags the only text.
            "sparse": cls(
                n_items=10_000,
                n_users=1_100,
                n_genres=20,
                plays_per_user=36.0,
                days=730,
                popularity_sigma=1.6,
                surface_events=False,
                time_granularity_days=1,
                release_years=False,
                title_style="names",
                tags_per_user=6.0,
                play_weights=True,
            ),
        }
        try:
            return presets[size]
        except KeyError:
            raise ValueError(f"unknown synthetic size {size!r}; known: {sorted(presets)}") from None


def generate(config: SyntheticConfig, seed: int) -> LogData:
    """The catalogue and logs for ``config``; identical output for identical (config, seed)."""
    if not 1 <= config.n_genres <= len(GENRES):
        raise ValueError(f"n_genres must be in [1, {len(GENRES)}]")
    if not 1 <= config.title_words_per_genre <= min(len(words) for words, _, _ in GENRES.values()):
        raise ValueError("title_words_per_genre must be in [1, 16]")
    if config.title_style not in TITLE_STYLES:
        raise ValueError(f"title_style must be one of {TITLE_STYLES}, not {config.title_style!r}")
    rng = np.random.default_rng(seed)
    world = _World.create(config, rng)
    plays = world.plays(rng)
    clicks = []
    if config.surface_events:
        clicks = [
            world.notification_opens(rng, plays),
            world.related_clicks(rng, plays),
            world.search_clicks(rng),
            world.category_clicks(rng),
        ]
    follow_ups = [world.plays_after(rng, table) for table in clicks]
    events = EventTable.concat([plays, *follow_ups, *clicks]).sorted()
    events = _drop_reopened_notifications(events, world.n_items)
    texts = world.tags(rng, plays) if config.tags_per_user > 0 else TextTable.empty()
    if config.play_weights:
        events.weight = np.ceil(np.exp(1.2 * rng.standard_normal(len(events)) + 1.0))
    if config.time_granularity_days > 0:
        unit = config.time_granularity_days * DAY_MS
        events.timestamp_ms = events.timestamp_ms // unit * unit
        texts.timestamp_ms = texts.timestamp_ms // unit * unit
    log = LogData(
        items=world.item_table(),
        user_ids=[f"u{u:05d}" for u in range(config.n_users)],
        category_ids=list(world.genre_names),
        events=events,
        source="synthetic",
        provenance={"seed": int(seed), "config": dataclasses.asdict(config)},
        texts=texts,
    )
    log.validate()
    return log


def _alias_table(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walker's alias table: O(1) draws from a fixed discrete distribution (Vose's construction)."""
    n = len(weight)
    scaled = weight * (n / weight.sum())
    accept = np.ones(n)
    alias = np.arange(n)
    small = [i for i in range(n) if scaled[i] < 1.0]
    large = [i for i in range(n) if scaled[i] >= 1.0]
    while small and large:
        s, g = small.pop(), large.pop()
        accept[s], alias[s] = scaled[s], g
        scaled[g] -= 1.0 - scaled[s]
        (small if scaled[g] < 1.0 else large).append(g)
    return accept, alias


def _normalise(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-9)


def _gumbel_choice(rng: np.random.Generator, logits: np.ndarray) -> np.ndarray:
    """Column index per row sampled from softmax(logits) (Gumbel-max)."""
    uniform = rng.random(logits.shape, dtype=np.float32)
    gumbel = -np.log(-np.log(np.clip(uniform, 1e-7, 1.0 - 1e-7)))
    return np.argmax(logits + gumbel, axis=1)


@dataclass
class _World:
    """The latent state behind one synthetic data set."""

    config: SyntheticConfig
    genre_names: list[str]
    genre_vecs: np.ndarray  # [G, D]
    item_vecs: np.ndarray  # [I, D] unit
    item_genres: list[list[int]]
    item_words: list[list[str]]
    item_log_pop: np.ndarray  # [I]
    item_fresh: np.ndarray  # [I] 1 for recent releases
    release_year: np.ndarray
    maturity: np.ndarray
    user_start: np.ndarray  # [U, D] unit taste at the log's start
    user_end: np.ndarray  # [U, D] unit taste at its end
    user_activity: np.ndarray  # [U] multiplier of every per-user rate

    @property
    def n_items(self) -> int:
        return int(self.item_vecs.shape[0])

    @property
    def span_ms(self) -> int:
        return self.config.days * DAY_MS

    @classmethod
    def create(cls, config: SyntheticConfig, rng: np.random.Generator) -> _World:
        names = list(GENRES)[: config.n_genres]
        g, d = config.n_genres, config.latent_dim
        genre_vecs = _normalise(rng.standard_normal((g, d)))
        # Genre sizes differ, as real catalogues do.
        genre_share = rng.dirichlet(np.full(g, 3.0))
        n_items = config.n_items
        n_genres_of_item = rng.choice([1, 2, 3], size=n_items, p=[0.5, 0.35, 0.15])
        item_genres: list[list[int]] = []
        item_vecs = np.empty((n_items, d))
        for i in range(n_items):
            k = min(int(n_genres_of_item[i]), g)
            genres = rng.choice(g, size=k, replace=False, p=genre_share).tolist()
            item_genres.append(genres)
            weights = np.array([1.0] + [0.5] * (k - 1))
            item_vecs[i] = weights @ genre_vecs[genres] + config.item_noise * rng.standard_normal(
                d
            ) / np.sqrt(d)
        item_vecs = _normalise(item_vecs)
        item_log_pop = config.popularity_sigma * rng.standard_normal(n_items)
        release_year = np.clip(2026 - np.floor(rng.exponential(10.0, size=n_items)), 1950, 2026).astype(
            np.int64
        )
        item_fresh = (release_year >= 2025).astype(np.float64)
        base_maturity = np.array([GENRES[names[gs[0]]][2] for gs in item_genres])
        maturity = np.clip(base_maturity + rng.integers(-1, 2, size=n_items), 0, 4).astype(np.int64)
        if config.title_style == "names":
            item_words = [cls._name_words(rng) for _ in item_genres]
        else:
            item_words = [
                cls._title_words(rng, [names[x] for x in gs], config.title_words_per_genre)
                for gs in item_genres
            ]
        if not config.release_years:
            release_year = np.zeros(n_items, dtype=np.int64)

        n_users = config.n_users
        favourite = rng.choice(g, size=(n_users, 2), p=genre_share)
        mix = rng.dirichlet([2.0, 1.0], size=n_users)
        user_start = _normalise(
            mix[:, :1] * genre_vecs[favourite[:, 0]]
            + mix[:, 1:] * genre_vecs[favourite[:, 1]]
            + 0.5 * rng.standard_normal((n_users, d)) / np.sqrt(d)
        )
        user_end = _normalise(
            user_start + config.taste_drift * rng.standard_normal((n_users, d)) / np.sqrt(d)
        )
        user_activity = np.exp(0.6 * rng.standard_normal(n_users) - 0.18)
        return cls(
            config=config,
            genre_names=names,
            genre_vecs=genre_vecs,
            item_vecs=item_vecs,
            item_genres=item_genres,
            item_words=item_words,
            item_log_pop=item_log_pop,
            item_fresh=item_fresh,
            release_year=release_year,
            maturity=maturity,
            user_start=user_start,
            user_end=user_end,
            user_activity=user_activity,
        )

    @staticmethod
    def _title_words(rng: np.random.Generator, genres: list[str], words_per_genre: int) -> list[str]:
        """2-4 distinct words, mostly from the item's genres (primary first), some common."""
        n_words = int(rng.choice([2, 3, 4], p=[0.35, 0.45, 0.2]))
        genre_weights = np.array([2.0] + [1.0] * (len(genres) - 1))
        genre_weights /= genre_weights.sum()
        words: list[str] = []
        while len(words) < n_words:
            if rng.random() < 0.72:
                pool = GENRES[genres[int(rng.choice(len(genres), p=genre_weights))]][0][:words_per_genre]
            else:
                pool = COMMON_WORDS
            word = pool[int(rng.integers(len(pool)))]
            if word not in words:
                words.append(word)
        # At least one genre word, so a title always says something about its content.
        if all(w in COMMON_WORDS for w in words):
            pool = GENRES[genres[0]][0][:words_per_genre]
            words[0] = pool[int(rng.integers(len(pool)))]
        return words

    @staticmethod
    def _name_words(rng: np.random.Generator) -> list[str]:
        """A made-up name of one or two three-syllable words (no content, rarely shared)."""
        n_words = int(rng.choice([1, 2], p=[0.4, 0.6]))
        picks = rng.integers(len(NAME_SYLLABLES), size=(n_words, 3))
        return ["".join(NAME_SYLLABLES[i] for i in word) for word in picks.tolist()]

    def tags(self, rng: np.random.Generator, plays: EventTable) -> TextTable:
        """Tags users put on items they played: a genre name or one of its descriptor words."""
        share = min(1.0, self.config.tags_per_user / max(self.config.plays_per_user, 1e-9))
        rows = np.flatnonzero(rng.random(len(plays)) < share)
        texts = []
        for item in plays.item[rows].tolist():
            genres = self.item_genres[item]
            genre = self.genre_names[genres[int(rng.integers(len(genres)))]]
            choices = (genre, *GENRES[genre][1])
            texts.append(choices[int(rng.integers(len(choices)))])
        return TextTable(
            user=plays.user[rows].copy(),
            item=plays.item[rows].copy(),
            text=texts,
            timestamp_ms=plays.timestamp_ms[rows] + 60_000,
        )

    def item_table(self) -> ItemTable:
        return ItemTable(
            item_ids=[f"i{i:05d}" for i in range(self.n_items)],
            titles=[" ".join(w.capitalize() for w in words) for words in self.item_words],
            categories=[[self.genre_names[g] for g in gs] for gs in self.item_genres],
            maturity=self.maturity.copy(),
            release_year=self.release_year.copy(),
        )

    # --- sampling helpers -------------------------------------------------------------------

    def _event_times(self, rng: np.random.Generator, rate: float) -> tuple[np.ndarray, np.ndarray]:
        """(user, time) per event: Poisson counts per user scaled by activity, uniform times."""
        counts = rng.poisson(rate * self.user_activity)
        users = np.repeat(np.arange(len(counts)), counts)
        times = LOG_START_MS + rng.integers(0, self.span_ms, size=len(users))
        return users, times

    def _taste(self, users: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Each user's unit taste vector at each time (linear drift start -> end)."""
        s = ((times - LOG_START_MS) / self.span_ms)[:, None]
        return _normalise((1 - s) * self.user_start[users] + s * self.user_end[users])

    def _popular_pool(
        self, rng: np.random.Generator, n: int, log_weight: np.ndarray, size: int | None = None
    ) -> np.ndarray:
        """[n, size] items drawn with probability ~ exp(log_weight) (size: ``click_pool_size``)."""
        accept, alias = _alias_table(np.exp(log_weight - log_weight.max()))
        shape = (n, size or self.config.click_pool_size)
        column = rng.integers(0, len(accept), size=shape)
        return np.where(rng.random(shape) < accept[column], column, alias[column])

    def _affinity(self, vecs: np.ndarray, pool: np.ndarray) -> np.ndarray:
        """[n, P] dot products of per-row vectors [n, D] with pooled items, in row chunks."""
        out = np.empty(pool.shape, dtype=np.float32)
        items = self.item_vecs.astype(np.float32)
        step = 4096
        # Scoring every item with one matmul and picking the pool is faster than gathering while
        # the catalogue is small (every preset); a large one (``--items``) would make each chunk
        # [4096, items] (16 GB at a million items).
        score_every = self.n_items <= SCORE_EVERY_ITEM_MAX
        for start in range(0, len(pool), step):
            chunk = slice(start, start + step)
            rows = vecs[chunk].astype(np.float32)
            if score_every:
                out[chunk] = np.take_along_axis(rows @ items.T, pool[chunk], axis=1)
            else:
                out[chunk] = np.einsum("npd,nd->np", items[pool[chunk]], rows)
        return out

    def _choose(
        self,
        rng: np.random.Generator,
        users: np.ndarray,
        times: np.ndarray,
        pool: np.ndarray,
        strength: float,
        extra_logits: np.ndarray | None = None,
    ) -> np.ndarray:
        """The engaged item per row: Gumbel-max over taste affinity within the pool."""
        logits = strength * self._affinity(self._taste(users, times), pool)
        if extra_logits is not None:
            logits = logits + extra_logits
        return pool[np.arange(len(pool)), _gumbel_choice(rng, logits)]

    # --- event types -----------------------------------------------------------------------

    def plays(self, rng: np.random.Generator) -> EventTable:
        users, times = self._event_times(rng, self.config.plays_per_user)
        pool = self._popular_pool(rng, len(users), self.item_log_pop, self.config.pool_size)
        items = self._choose(rng, users, times, pool, self.config.taste_strength)
        return EventTable.build(users, items, times, EventType.PLAY)

    def notification_opens(self, rng: np.random.Generator, plays: EventTable) -> EventTable:
        users, times = self._event_times(rng, self.config.notifications_per_user)
        # Notifications push fresh releases; users open the ones they like and have not seen.
        pool = self._popular_pool(rng, len(users), self.item_log_pop + 1.5 * self.item_fresh)
        seen = _FirstPlay(plays, self.n_items)
        pool_seen = seen(users[:, None], pool) < times[:, None]
        logits = np.where(pool_seen, -np.inf, 0.0).astype(np.float32)
        items = self._choose(rng, users, times, pool, self.config.taste_strength, logits)
        ok = ~pool_seen.all(axis=1)
        return EventTable.build(users[ok], items[ok], times[ok], EventType.NOTIFICATION_OPEN)

    def related_clicks(self, rng: np.random.Generator, plays: EventTable) -> EventTable:
        users, times = self._event_times(rng, self.config.related_per_user)
        # The anchor is the user's latest play before the click: the page they were on.
        order = np.lexsort((plays.timestamp_ms, plays.user))
        play_user, play_time, play_item = plays.user[order], plays.timestamp_ms[order], plays.item[order]
        key = users * (self.span_ms * 4) + (times - LOG_START_MS)
        play_key = play_user * (self.span_ms * 4) + (play_time - LOG_START_MS)
        pos = np.searchsorted(play_key, key, side="left") - 1
        has_anchor = (pos >= 0) & (play_user[np.maximum(pos, 0)] == users)
        users, times, pos = users[has_anchor], times[has_anchor], pos[has_anchor]
        anchors = play_item[pos]
        pool = self._popular_pool(rng, len(users), self.item_log_pop)
        anchor_affinity = np.einsum("npd,nd->np", self.item_vecs[pool], self.item_vecs[anchors])
        logits = self.config.anchor_strength * anchor_affinity.astype(np.float32)
        logits[pool == anchors[:, None]] = -np.inf
        items = self._choose(
            rng, users, times, pool, self.config.related_taste_share * self.config.taste_strength, logits
        )
        return EventTable.build(users, items, times, EventType.RELATED_CLICK, anchor_item=anchors)

    def search_clicks(self, rng: np.random.Generator) -> EventTable:
        users, times = self._event_times(rng, self.config.searches_per_user)
        pool = self._popular_pool(rng, len(users), self.item_log_pop)
        items = self._choose(rng, users, times, pool, self.config.taste_strength)
        kinds = rng.choice(3, size=len(items), p=self.config.query_mix)
        queries: list[str] = []
        for item, kind in zip(items.tolist(), kinds.tolist(), strict=True):
            words = self.item_words[item]
            if kind == 0:  # one title word
                queries.append(words[int(rng.integers(len(words)))])
            elif kind == 1:  # two title words, in title order
                pick = np.sort(rng.choice(len(words), size=2, replace=False))
                queries.append(" ".join(words[i] for i in pick.tolist()))
            else:  # a descriptor of one of its genres: no title contains it
                genres = self.item_genres[item]
                descriptors = GENRES[self.genre_names[genres[int(rng.integers(len(genres)))]]][1]
                queries.append(descriptors[int(rng.integers(len(descriptors)))])
        return EventTable.build(users, items, times, EventType.SEARCH_CLICK, query=queries)

    def category_clicks(self, rng: np.random.Generator) -> EventTable:
        users, times = self._event_times(rng, self.config.category_clicks_per_user)
        # Users open the rows of genres they like.
        genre_logits = 4.0 * (self._taste(users, times) @ self.genre_vecs.T)
        categories = _gumbel_choice(rng, genre_logits.astype(np.float32))
        items = np.empty(len(users), dtype=np.int64)
        members: list[list[int]] = [[] for _ in self.genre_names]
        for item, genres in enumerate(self.item_genres):
            for g in genres:
                members[g].append(item)
        for g, genre_items in enumerate(members):
            rows = np.flatnonzero(categories == g)
            if not len(rows):
                continue
            in_genre = np.asarray(genre_items, dtype=np.int64)
            local = self._popular_pool(rng, len(rows), self.item_log_pop[in_genre])
            items[rows] = self._choose(
                rng, users[rows], times[rows], in_genre[local], self.config.taste_strength
            )
        return EventTable.build(users, items, times, EventType.CATEGORY_CLICK, category=categories)

    def plays_after(self, rng: np.random.Generator, clicks: EventTable) -> EventTable:
        """Plays of clicked items shortly after some of the clicks."""
        keep = rng.random(len(clicks)) < self.config.play_after_click
        delay = rng.integers(30_000, 600_000, size=int(keep.sum()))
        return EventTable.build(
            clicks.user[keep], clicks.item[keep], clicks.timestamp_ms[keep] + delay, EventType.PLAY
        )


class _FirstPlay:
    """Vectorised lookup of the first time a user played an item (int64 max if never)."""

    def __init__(self, plays: EventTable, n_items: int) -> None:
        self.n_items = n_items
        codes = plays.user * n_items + plays.item
        order = np.lexsort((plays.timestamp_ms, codes))
        codes, times = codes[order], plays.timestamp_ms[order]
        first = np.r_[True, codes[1:] != codes[:-1]]
        self.codes, self.times = codes[first], times[first]

    def __call__(self, users: np.ndarray, items: np.ndarray) -> np.ndarray:
        codes = users * self.n_items + items
        pos = np.minimum(np.searchsorted(self.codes, codes), max(len(self.codes) - 1, 0))
        found = (self.codes[pos] == codes) if len(self.codes) else np.zeros(codes.shape, dtype=bool)
        never = np.iinfo(np.int64).max
        return np.where(found, self.times[pos] if len(self.times) else never, never)


def _drop_reopened_notifications(events: EventTable, n_items: int) -> EventTable:
    """Drop notification opens of items the user had already played (follow-up plays included).

    Notifications are about unseen items; the evaluation excludes seen items, so such an event
    would be an unreachable label.
    """
    is_play = events.event_type == EventType.PLAY
    first_play = _FirstPlay(events.take(is_play), n_items)
    is_open = events.event_type == EventType.NOTIFICATION_OPEN
    seen_before = first_play(events.user, events.item) < events.timestamp_ms
    return events.take(~(is_open & seen_before))
