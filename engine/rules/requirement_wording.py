"""The words that make a written comparison a requirement, hard or soft, and the words that only describe,
condition or hedge it ("the 2024 model had an AUC of 0.91", "if latency is above 40 ms", "usually means").

Separate because whether a clause requires is a matter of wording, asked of a comparison's clause, of its whole unit
and of the heading above it; the extraction also asks it of whole clauses before it reads any preference.
"""

from __future__ import annotations

import re

SOFT = re.compile(
    r"\b(?:should|shouldn't|ideally|preferably|preferred|prefer(?:ably)?|would like|nice to have|target|aim(?:s|ing)? (?:for|at|to)|"
    r"aspire|desirable|desired|recommended|where possible|if possible|wherever possible|soft|exception|justification|tolerated|"
    r"goal|optional|strive|nice to|would be (?:nice|good|great)|we'd like|would (?:also |still )?like|not a hard stop|would rather|"
    r"rather not|preference|a guide|not a gate|can overrule|can be overruled|if (?:you|we) can|if feasible|"
    r"nice-to-have|not blocking|non-blocking|not (?:a |the )?gates?|not part of the bar|"
    r"can (?:still )?(?:go live|ship|be deployed|be released|launch) without|(?<=\[)tracked(?=\])|tracked only|"
    r"do not require|does not require|not required|not a requirement)\b", re.I)
HARD = re.compile(
    r"\b(?:must|required|requires?|requirement|has to|have to|need(?:s)? to|needs?|needed|only (?:when|if)|unless|shall|"
    r"mandatory|hard|non-negotiable|at all times|cannot|can't|may not|never|not deployed|not acceptable|unacceptable|"
    r"no exceptions?|is a must|disqualif\w*|budget|limit|limited to|maximum|minimum|cap|capped|floor|ceiling|ruled out|blocking|"
    r"gates?|gated|all required|go-live|before go-live|keep|bar)\b", re.I)
_CONDITION = re.compile(r"(?:^\s*|[,;:(]\s*|\b(?:and|but)\s+)(?:if(?!\s+(?:you|we)\s+can\b|\s+possible\b|\s+feasible\b)|when|"
                        r"(?<=, )where|whenever|anything|any model that|because|since|although|"
                        r"though|e\.g\.|for example|for instance|such as)\b", re.I)
_ONLY_IF = re.compile(r"\bonly (?:if|when)\b|\bunless\b", re.I)
DESCRIPTIVE = re.compile(r"\b(?:was|were|had|did|got|scored|reached|achieved|(?<!the )(?<!our )(?<!its )measured|(?<!the )logged|"
                         r"(?<!if you )(?<!if we )can(?!['’]t|not)|could(?!n['’]t| not)|might|may(?! not)|"
                         r"often|typically|usually|easily|tends? to|historically|last (?:year|spring|summer|autumn|winter)|"
                         r"until|used to|previously|formerly|former|earlier limit|old limit|previous limit|no longer|any ?more|"
                         r"in the past|superseded|dropped|"
                         r"in (?:19|20)\d\d|failed|passed|led|won|lost|broke|"
                         r"beat|missed|excluded|(?<!is )(?<!be )(?<!are )(?<!gets )promoted|replaced|retired|observed|showed|reported|"
                         r"request to|requested|"
                         r"proposal|proposed|raise (?:the|a|our) (?:limit|threshold|budget|bar)|raised|relax(?:ed|ing)?(?= the)|declined|"
                         r"quotes?|quoted|according to|comparable|exceeded|fell|dropped|came in|"
                         r"stayed|competitive|averaged|discussed|next year|next quarter|roadmap|aspiration|ambition|published|"
                         r"advertises|advertised|vendor claims|public checkpoints)\b", re.I)
# "is rejected if latency exceeds 40 ms" states the rule "latency <= 40 ms" by its negation.
REJECT_IF = re.compile(
    r"\b(?:reject\w*|exclud\w*|disqualif\w*|ruled out|fails?|not (?:be )?(?:deployed|accepted|considered|promoted)|"
    r"never (?:be )?(?:deployed|accepted|promoted)|blocked)\s+(?:if|when|whenever|once)\b"
    r"|\b(?:not|never|won't|will not|cannot|can't|do not|don't|would rather not)\s+(?:ship|launch|deploy|release|accept|promote|"
    r"approve|go live with|put)\s+(?:anything|(?:an?|any|the)?\s*[\w-]+(?:\s+[\w-]+)?)\s+(?:whose|that|which|with|if|where|"
    r"when|unless)\b", re.I)


A_MODEL_THAT = re.compile(r"\b(?:a|any)\s+(?:model|candidate|forecast|scorer|detector|classifier|system)\s+(?:that|whose|which)\b", re.I)
DISQUALIFIES = re.compile(r"^[^.;]{0,100}?\b(?:disqualif\w*|rules? (?:it|the model|a model|a candidate) out|is a no-go|"
                          r"is not acceptable|is unacceptable|means (?:rejection|no-go)|is rejected|gets? (?:it )?rejected|"
                          r"(?:is|are|will be) (?:not|never) (?:released|deployed|shipped|promoted|approved|accepted)|"
                          r"(?:does not|doesn't|do not|will not|won't) go live)\b", re.I)
MODAL = re.compile(r"\b(?:must|shall|has to|have to|needs? to|is required to|are required to)\b", re.I)
# "must improve on the champion by at least 2 points" bounds a difference, not the metric: not a threshold to check
RELATIVE_TO = re.compile(r"\b(?:improve\w*|beat\w*|outperform\w*)\b[^.;]{0,40}?\bby\b|\b(?:than|over) the (?:current|champion|"
                         r"baseline|incumbent|production)\b[^.;]{0,20}?\bby\b", re.I)
_NONE_MAY = re.compile(r"\bno\s+\w+(?:\s+\w+)?\s+(?:may|can|should|must|will|is allowed to)\b", re.I)  # "no candidate may"
# "can absorb at most", "will tolerate no more than": a stated capacity is a limit, not a possibility
_CAPACITY = re.compile(r"\b(?:can|will|would|could)\s+(?:only\s+)?(?:\w+\s+){1,2}?"
                       r"(?=at most|no more than|up to|at least|at the most)", re.I)


def clause_requires(segment: str, unit: str, heading: str = "") -> bool:
    """A comparison is a rule when its clause requires or prefers it, not when it describes or conditions; a heading
    that asks or states a requirement ("How fast does it have to be?") makes the plain answer under it one."""
    if _ONLY_IF.search(segment) or _NONE_MAY.search(segment):
        return True
    if _CONDITION.search(segment) or DESCRIPTIVE.search(_CAPACITY.sub("", segment)) or RELATIVE_TO.search(unit):
        return False
    return bool(HARD.search(segment) or SOFT.search(segment) or HARD.search(unit) or SOFT.search(unit) or _CAPACITY.search(segment)
                or re.search(r"[<>≤≥]", segment) or " | " in unit or HARD.search(heading)
                or unit.startswith("- ") and not _CONTEXT_HEADING.search(heading))


_MARKUP_KIND = re.compile(r"(?:^|[|—–-]\s*\**)(hard|soft)(?:\**\s*(?:[|—–-]|$))", re.I)


def is_hard(segment: str, unit: str, heading: str = "") -> bool:
    """The comparison's own clause first, then a hard/soft cell or dash field, then the whole unit's words, then the
    section's heading ("Nice to have")."""
    if SOFT.search(segment):
        return False
    if HARD.search(segment):
        return True
    if marked := _MARKUP_KIND.search(unit):
        return marked.group(1).lower() == "hard"
    if SOFT.search(unit) or HARD.search(unit):
        return not SOFT.search(unit)
    return not SOFT.search(heading)


def states_a_requirement(segment: str, unit: str, heading: str) -> bool:
    """Hard words in the clause, the unit or the heading above it ("Go-live gates (ALL blocking)"), a ≤/≥ sign or a
    list item: what a reader takes for a requirement even when the product cannot tell which metric it bounds."""
    return bool(HARD.search(segment) or HARD.search(unit) or HARD.search(heading) or re.search(r"[<>≤≥]", segment)
                or unit.startswith("- ") and not DESCRIPTIVE.search(unit) and not _CONTEXT_HEADING.search(heading)
                and not _A_STEP.match(unit))


# "- **Warm-up.** Make at least 10 warm-up calls": a step of a procedure, what a person does, not what a model must meet
_A_STEP = re.compile(r"^-\s+(?:\*\*[^*]{1,40}\*\*\s*|[A-Z][\w -]{0,30}[.:]\s+)?(?:make|run|use|take|copy|time|discard|repeat|"
                     r"record|measure|call|send|collect|load|start|wait|write|compute|average|report|check|trigger|"
                     r"open|click|upload|download|restart|set|add|remove)\b", re.I)
# "## For context", "Notes", "Background": a list under such a heading informs, it does not require
_CONTEXT_HEADING = re.compile(r"\b(?:context|background|notes?|history|for reference|for information|informative|"
                              r"not rules|not requirements|faq|glossary|definitions|rules? of thumb|tips)\b", re.I)
# "An RMSE below 15 cycles usually means the model is good": what a number tends to mean, not a requirement
HEDGED_AFTER = re.compile(r"^[^.;]{0,30}?\b(?:usually|typically|often|generally|normally|tends? to|means?|indicates?|suggests?)\b", re.I)
