"""blat.pipeline.tags: the curated path -> AudioSet tag table and its validation."""

from __future__ import annotations

import pytest

from blat.pipeline import sources
from blat.pipeline.tags import TAG_RULES_PATH, TagTableError, load_tag_table, parse_tag_table, parse_tags
from blat_contract.labels import audioset_labels

HEADER = "package,pattern,tags,caption_hint\n"


def test_committed_table_loads_and_every_tag_is_an_audioset_class():
    table = load_tag_table()
    assert len(table.rules) > 100
    names = set(audioset_labels())
    for rule in table.rules:
        assert set(rule.tags) <= names, rule.line
        assert rule.package == "*" or rule.package in sources.PACKAGES, f"line {rule.line}: unknown package"


def test_committed_table_tags_real_voices_and_music_and_excludes_the_doubtful():
    table = load_tag_table()
    tagged = {
        ("ufoai-sound", "0snd.pk3/sound/civilians/civfemscream01a.ogg"): "Screaming",
        ("0ad-data", "public.zip/audio/voice/greek/civ/civ_male_attack_1.ogg"): "Male speech, man speaking",
        ("0ad-data", "public.zip/audio/music/Peaceful_Island.ogg"): "Video game music",
        ("sound-theme-freedesktop", "audio-channel-front-left.oga"): "Speech",
        ("scratch", "Media/Sounds/Human/Laugh-male1.wav"): "Laughter",
        ("scratch", "Media/Sounds/Instruments/Trumpet1.wav"): "Trumpet",
        ("alsa-utils", "Front_Left.wav"): "Female speech, woman speaking",
    }
    for (package, path), tag in tagged.items():
        rule = table.match(package, path)
        assert rule is not None and tag in rule.tags, (package, path)
    # fictional creature voices, interface stingers and most synthetic voices stay out
    for package, path in [
        ("ufoai-sound", "0snd.pk3/sound/aliens/ortnok/die1.ogg"),
        ("openarena-data", "missionpack/mp-pak0.pk3/sound/voices/festivoxmale/jerk.ogg"),
        ("hedgewars-data", "voices/Robot/Hello.ogg"),
    ]:
        rule = table.match(package, path)
        assert rule is not None and rule.excludes, (package, path)
    synthetic = table.match("openarena-data", "missionpack/mp-pak0.pk3/sound/voices/festivoxmale/yes.ogg")
    assert "Speech synthesizer" in synthetic.tags  # synthetic speech can be counted apart


@pytest.mark.parametrize(
    "package,path,expected",
    [
        ("minetest-data", "minetest_game/mods/default/sounds/default_gravel_footstep.2.ogg", "Walk, footsteps"),
        ("minetest-data", "minetest_game/mods/default/sounds/default_break_glass.1.ogg", "Shatter"),
        ("minetest-data", "minetest_game/mods/fire/sounds/fire_fire.1.ogg", "Crackle"),
        ("bucklespring-data", "1e-0.wav", "Computer keyboard"),
        ("ufoai-sound", "0snd.pk3/sound/weapons/bullet-rifle.ogg", "Gunshot, gunfire"),
        ("ufoai-sound", "0snd.pk3/sound/weapons/explosion.ogg", "Explosion"),
        ("openttd-opensfx", "opensfx.cat/36 Sheep", "Sheep"),
    ],
)
def test_committed_table_tags_describe_the_sound(package, path, expected):
    rule = load_tag_table().match(package, path)
    assert rule is not None and expected in rule.tags


def test_first_matching_row_wins_and_unmatched_is_none():
    table = parse_tag_table(HEADER + 'p,glass,"Glass;Shatter",glass breaks\np,.*,Wood,anything\n*,bird,Bird,\n')
    assert table.match("p", "a/break_glass.ogg").tags == ("Glass", "Shatter")
    assert table.match("p", "a/door.ogg").tags == ("Wood",)
    assert table.match("q", "x/bird.ogg").tags == ("Bird",)  # "*" rows apply to every package
    assert table.match("q", "x/door.ogg") is None


def test_empty_tags_exclude():
    table = parse_tag_table(HEADER + "p,voice,,speech\n")
    assert table.match("p", "voice/hello.ogg").excludes


def test_bad_tag_names_the_line_and_suggests(tmp_path):
    path = tmp_path / "rules.csv"
    path.write_text(HEADER + "# a comment\np,ok,Bird,\np,glass,Glas;Shatter,\n")
    with pytest.raises(TagTableError) as e:
        load_tag_table(path)
    msg = str(e.value)
    assert f"{path}:4" in msg and "'Glas'" in msg and "527 AudioSet" in msg and "'Glass'" in msg


@pytest.mark.parametrize(
    "body,needle",
    [
        ("p,(unclosed,Bird,\n", "bad regex"),
        ("p,x,Bird\n", "expected 4 columns"),
        ("p,x,Bird;Bird,\n", "repeated tag"),
    ],
)
def test_malformed_rows(body, needle):
    with pytest.raises(TagTableError, match=needle):
        parse_tag_table(HEADER + body)


def test_wrong_header():
    with pytest.raises(TagTableError, match="header"):
        parse_tag_table("pkg,regex,labels\np,x,Bird\n")


def test_parse_tags_is_exact_about_names():
    assert parse_tags(" Fire ; Crackle ") == ("Fire", "Crackle")
    assert parse_tags("") == ()
    with pytest.raises(TagTableError):
        parse_tags("fire")  # display names are matched exactly, case included


def test_table_file_is_inside_the_package():
    assert TAG_RULES_PATH.is_file() and TAG_RULES_PATH.parent.name == "data"
