"""Terms for bot/prompt_filter.py's built-in rule: a prompt with a term for a minor and a sexual term
is refused, in English, Spanish, French, German, Portuguese, Italian, Russian, Japanese and Chinese.

Each entry is an RE2 fragment over prompt_filter.words_view(): casefolded, look-alikes folded, words
only and one space apart, so `[^ ]*` is "the rest of the word". A space inside an entry also matches
nothing (`_` and `-` are spaces by then). Lists of spaced scripts get word boundaries on both sides;
the CJK lists have none, so their entries guard the words they sit inside (ヌード but not ヌードル
"noodle", ロリ but not カロリー "calorie").

Kept small on purpose: a word with an everyday adult or non-sexual sense is left out (English "baby",
"kind", "bimbo", "tits"; Spanish "pedo"; French "nu"), because this rule cannot be turned off.
"""

from __future__ import annotations

_AGE = r"(?:[1-9]|1[0-7]) ?(?:yo|y o|yrs? old|years? old|year olds?|años|anos|anni|ans|jahre alt|j[äa]hrige[^ ]*|лет|года?)"

MINORS = (
    # English
    r"child(?:ren|s)?",
    r"kids?",
    r"kidd(?:ie|ies|o|os)",
    r"minors?",
    r"under ?aged?",
    r"pre ?teens?",
    r"tweens?",
    r"teen(?:s|age|aged|ager|agers)?",
    r"toddlers?",
    r"infants?",
    r"newborns?",
    r"(?:pre)?pubescent",
    r"school ?(?:girl|boy)s?",
    r"(?:little|young) (?:girl|boy)s?",
    r"loli(?:s|ta|tas)?",
    r"shotas?",
    _AGE,
    # Spanish
    r"niñ(?:o|a|os|as|ito|ita|itos|itas)",
    r"menor(?:es)? de edad",
    r"chiquill(?:o|a|os|as)",
    r"colegialas?",
    r"adolescent(?:e|es|s|i)?",  # also French, Portuguese, Italian
    r"infantil(?:es|e)?",  # also Portuguese; French "infantile"
    # French
    r"enfants?",
    r"fillettes?",
    r"gamin(?:e|es|s)?",
    r"mineur(?:e|es|s)?",
    r"petite fille",
    r"petit garçon",
    r"écolières?",
    # German ("kind" alone is English)
    r"kinder(?:n)?",
    r"kindes",
    r"(?:ein|das|dem|kleines|nacktes|junges) kind",
    r"kleinkind(?:er)?",
    r"mädchen",
    r"schulmädchen",
    r"minderjährig[^ ]*",
    r"jugendlich[^ ]*",
    # Portuguese
    r"crianças?",
    r"menin(?:o|a|os|as)",
    r"menor(?:es)? de idade",
    r"garotinh(?:o|a|os|as)",
    # Italian
    r"bambin(?:o|a|i|e)",
    r"minorenn(?:e|i)",
    r"ragazzin(?:o|a|i|e)",
    # Russian
    r"реб[её]н(?:ок|ка|ку|ком|ке)",
    r"дет(?:и|ей|ям|ьми|ях)",
    r"детск[^ ]*",
    r"девоч(?:ка|ки|ку|кой|ке|ек)",
    r"мальчик[^ ]*",
    r"несовершеннолетн[^ ]*",
    r"подрост(?:ок|ка|ки|ков|ку|ком)",
    r"школьни(?:к|ц)[^ ]*",
    r"малолет[^ ]*",
)

SEXUAL = (
    # English
    r"sex",
    r"sexy",
    r"sexual[^ ]*",
    r"nud(?:e|es|ity|ist|ists|ism)",
    r"naked",
    r"nsfw",
    r"porn[^ ]*",  # also porno, pornô, pornografía, pornographie, pornografia
    r"hentai",
    r"erotic[^ ]*",
    r"lewd[^ ]*",
    r"xxx",
    r"nipples?",
    r"genital[^ ]*",
    r"penis[^ ]*",
    r"vagina[^ ]*",
    r"vulva",
    r"boob(?:s|ies)?",
    r"titties",
    r"topless",
    r"lingerie",
    r"undress[^ ]*",
    r"strip(?:ping|per|pers|tease)",
    r"orgasm[^ ]*",
    r"masturbat[^ ]*",
    r"fetish[^ ]*",
    r"bdsm",
    r"seduct[^ ]*",
    r"sensual[^ ]*",
    r"intercourse",
    r"(?:blow|hand)jobs?",
    r"rap(?:e|ed|ing|ist)",
    r"molest[^ ]*",
    r"onlyfans",
    # Spanish
    r"sexo",
    r"desnud(?:o|a|os|as|ez)",
    r"er[oó]tic[^ ]*",  # also Portuguese, Italian
    r"lencer[ií]a",
    r"tetas",
    r"follar",
    r"cachond[^ ]*",
    # French
    r"sexe",
    r"sexuel[^ ]*",
    r"nues?",
    r"tout nu",
    r"d[ée]nud[ée][^ ]*",
    r"[ée]rotique[^ ]*",
    r"seins",
    r"d[ée]shabill[ée][^ ]*",
    # German
    r"nackt[^ ]*",
    r"sexuell[^ ]*",
    r"erotisch[^ ]*",
    r"brüste",
    r"unbekleidet[^ ]*",
    r"entkleidet[^ ]*",
    # Portuguese
    r"nuas?",
    r"pelad(?:o|a|os|as)",
    r"seios",
    r"safad(?:o|a|os|as)",
    # Italian
    r"nud(?:o|a|i)",
    r"sesso",
    r"sessual[^ ]*",
    r"spogliat[^ ]*",
    r"tette",
    # Russian
    r"секс[^ ]*",
    r"порн[^ ]*",
    r"гол(?:ая|ый|ые|ое|ых|ыми|ой|ую|енькая|енький|енькие|ышом)",
    r"обнаж[^ ]*",
    r"нагишом",
    r"наг(?:ая|ой|ие|ое|их)",
    r"эрот[^ ]*",
    r"сиськ[^ ]*",
)

_NOT_KATAKANA_BEFORE = r"(?:^|[^\x{30A0}-\x{30FF}])"

MINORS_CJK = (
    r"子供",
    r"子ども",
    r"こども",
    r"[児兒儿]童",
    r"幼[女児兒儿童]",
    r"少女",
    r"少年",
    r"[小中]學生",
    r"[小中]学生",
    r"初中生",
    r"女子高生",
    r"未成年",
    r"[女男][児童]",
    r"小孩",
    r"孩子",
    r"[萝蘿]莉",
    r"正太",
    _NOT_KATAKANA_BEFORE + r"ロリ",
    _NOT_KATAKANA_BEFORE + r"ショタ",
    r"(?:^|[^0-9])(?:[1-9]|1[0-7]) ?[歳才岁歲]",
)

SEXUAL_CJK = (
    _NOT_KATAKANA_BEFORE + r"エロ",  # not ヒエログリフ "hieroglyph"
    r"えっち",
    r"エッチ(?:[^ン]|$)",  # not エッチング "etching"
    r"セックス",
    r"性的[なに]",  # not 性的少数者 "sexual minority"
    r"性行為",
    r"ヌード(?:[^ル]|$)",  # not ヌードル "noodle"
    r"[全半]裸",
    r"裸[体體露]",
    r"裸の(?:[^王]|$)",  # not 裸の王様 "The Emperor's New Clothes"; 裸足 "barefoot" is not matched at all
    r"はだか",
    r"ポルノ",
    r"わいせつ",
    r"猥褻",
    r"卑猥",
    r"淫",
    r"乳首",
    r"性器",
    r"18禁",
    r"成人向け",
    r"色情",
    r"性[爱愛交]",
    r"做[爱愛]",
    r"性感",
    r"[脱脫]衣",
    r"[无無]码",
    r"無碼",
)

# Refused on their own: words whose meaning is already the combination.
ALWAYS = (
    r"lolicon",
    r"shotacon",
    r"jailbait",
    r"p(?:ae|a|ä|é|e)dophil[^ ]*",
    r"pedofil[^ ]*",
    r"p[ée]dopornograph[^ ]*",
    r"pedopornograf[^ ]*",
    r"педофил[^ ]*",
)

ALWAYS_CJK = (
    r"ロリコン",
    r"ショタコン",
    r"[恋戀]童",
    r"[萝蘿]莉控",
)
