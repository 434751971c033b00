//! Structural features of a response for the refusal model.
//!
//! A refusal cue at the start of a response is evidence, not proof: what
//! decides is whether the rest of the response goes on to answer. The
//! features below describe both: which cues there are (the opening rules of
//! `rules.rs`, plus cue sets over the head and the tail of the window) and
//! what the response is made of (its length, lists, code, labelled lines,
//! paragraphs, questions back to the user). [`Features::extract`] fills a
//! fixed-size vector from three regex-set searches (opening rules over the
//! window, cues over its first [`HEAD_BYTES`] and a few over its last
//! [`TAIL_BYTES`]) and one `memchr` pass over the bytes.

/// Bytes at the start of the window searched for head cues.
pub(crate) const HEAD_BYTES: usize = 384;
/// Bytes at the start of the window whose lines the shape pass looks at
/// (lists, labelled lines, paragraphs); length, code fences and question
/// marks count over the whole window.
pub(crate) const SHAPE_LINE_BYTES: usize = 2048;
/// Bytes at the end of the window searched for the tail cues.
pub(crate) const TAIL_BYTES: usize = 320;

/// The cues (indices in [`CUES`]) also looked for in the tail: how a
/// refusal ends (a closing offer, a redirect, a restated inability).
pub(crate) const TAIL_CUES: &[usize] = &[
    cue::INABILITY,
    cue::POLICY_REASON,
    cue::REDIRECT,
    cue::OFFER_OTHER,
    cue::DEFLECT_QUESTION,
];

/// Cue patterns searched (unanchored) in the head and, separately, in the
/// tail of the window. Templates use the fragments of `rules.rs`.
pub(crate) const CUES: &[(&str, &str)] = &[
    // First-person refusal of the task anywhere in the head ("... and I
    // cannot provide that", "I am not able to assist").
    ("inability", r"(?i-u)\b<I_NEG>\s+<NEG_ADV><ASSIST_VERB>"),
    // Inability about the model itself ("I can't browse", "I cannot access").
    ("self_inability", r"(?i-u)\b<I_NEG>\s+<NEG_ADV><CAP_VERB>"),
    // Rules, programming, guidelines invoked as the reason.
    (
        "policy_reason",
        r"(?i-u)(?:\b(?:programmed|designed|built|trained)\s+to\s+(?:follow|adhere|avoid|not\b|refrain)|\bprohibit\w*\s+(?:me|from)|\bnot\s+(?:programmed|allowed|permitted|designed)\s+to\b|\b(?:against|violat\w*|within)\s+(?:my|our|the|openai<A>?s)\s+(?:\w+\s+){0,2}?(?:guidelines|polic(?:y|ies)|principles|programming|values|terms)|\bethical\s+(?:guidelines|standards|boundaries|principles)\b)",
    ),
    // Send the user elsewhere: a professional, a hotline, the authorities.
    (
        "redirect",
        r"(?i-u)\b(?:consult(?:ing)?|seek(?:ing)?|reach(?:ing)?\s+out\s+to|talk(?:ing)?\s+(?:to|with)|speak(?:ing)?\s+(?:with|to)|contact(?:ing)?|call(?:ing)?|guidance\s+(?:of|from)|assistance\s+of)\s+(?:\w+\s+){0,4}?(?:professionals?|therap\w+|counsel+ors?|doctors?|experts?|lawyers?|attorneys?|hotlines?|helplines?|authorities|specialists?|physicians?|police|trusted\s+(?:adult|friend))\b|\b(?:crisis|suicide|prevention)\s+(?:line|hotline|lifeline)\b",
    ),
    // "Instead, ...", "I'd encourage you to focus on ...": an alternative offered.
    (
        "instead",
        r"(?i-u)\binstead\b|\bi\s+(?:would\s+|<A>d\s+)?(?:strongly\s+)?(?:suggest|recommend|encourage|urge)\s+(?:you\s+)?(?:to\s+)?(?:focus|seek|consult|explor|consider|reach|talk|learn|prioriti|find)",
    ),
    // The closing offer of a refusal: "If you have any other questions ...".
    (
        "offer_other",
        r"(?i-u)\b(?:any\s+other|anything\s+else|other\s+(?:\w+\s+)?(?:questions?|topics?|requests?|inquiries|subjects?)|(?:different|another)\s+(?:topic|question|request|subject)|something\s+else|non-\w+\s+(?:questions?|requests?|inquiries|topics?))\b",
    ),
    // An answer is announced: "Here is", "Here are" at a sentence start.
    (
        "here_is",
        r"(?i-u)(?:^|[.!?:]\s+|\n)[\s*_#]*(?:(?:however|that\s+said|that\s+being\s+said|but|so|now|sure|okay|ok|certainly|of\s+course|absolutely)\b,?\s*(?:!\s*)?)?(?:if\s+you<GAP>*,\s*)?here(?:\s+are|\s+is|<A>s|\s+goes|\s+you\s+go)\b",
    ),
    // A contrast that introduces help: "However, I can ...", "but here are".
    (
        "contrast_help",
        r"(?i-u)\b(?:however|but|that\s+said|nevertheless|nonetheless),?\s+(?:i\s+(?:can|will|could|<A>ll|would\s+be\s+happy|am\s+happy)\b|here\b|if\s+you|you\s+(?:can|could|may|might)\b|there\s+are\b|in\s+general\b|generally\b|i\s+can\s+(?:tell|provide|give|offer|share|help|explain|suggest|describe))|\blet<A>?s\s+(?:delve|dive|explore|get|take|break|look|discuss|start|begin)\b",
    ),
    // A disclaimer about the model's own nature ("I don't have personal opinions").
    (
        "no_opinion",
        r"(?i-u)\bi\s+(?:don<A>?t|do\s+not)\s+(?:have|hold|possess|form|experience)\s+(?:any\s+)?(?:personal\s+)?(?:opinions?|beliefs?|feelings?|emotions?|preferences?|views?|experiences?|biases|a\s+personal)|\bnot\s+capable\s+of\s+(?:having|forming|feeling|holding)",
    ),
    // A moral judgement ("is illegal and unethical", "is never acceptable").
    (
        "moral",
        r"(?i-u)\b(?:is|are|would\s+be|be)\s+(?:<ADV>\s+)?(?:illegal|<MORAL>|harmful|dangerous|offensive|disrespectful|inappropriate|discriminatory)\b",
    ),
    // A role-play persona or "developer mode" marker: the answer comes after.
    (
        "persona",
        r"(?i-u)\xF0\x9F\x94\x93|\bdeveloper\s+mode\b|\bjailbr(?:ea|o)k(?:en)?\b|\[[^\]\n]+\]",
    ),
    // The refusal cue is quoted or said by someone else.
    (
        "quoted_cue",
        r#"(?i-u)["\xE2\x80\x9C]\s*(?:i<A>?m\s+sorry|i\s+(?:cannot|can<A>?t|won<A>?t)|as\s+an\s+ai)|\b(?:he|she|they|the\s+(?:character|model|assistant|bot|ai))\s+(?:said|says|replied|replies|responded|responds|answered|refused|refuses)\b"#,
    ),
    // "I will / can provide / explain ...": the response engages.
    (
        "will_help",
        r"(?i-u)\bi\s+(?:will|<A>ll|can|could|am\s+going\s+to|would\s+be\s+happy\s+to|<A>d\s+be\s+happy\s+to)\s+(?:now\s+|gladly\s+|certainly\s+|try\s+to\s+)?(?:provide|explain|give|write|describe|outline|share|tell|create|offer|list|walk|draft|compose|suggest)\b",
    ),
    // An apology or regret anywhere in the segment.
    (
        "sorry",
        r"(?i-u)\b(?:sorry|apologi[sz]e|apologies|unfortunately|regret(?:tably)?)\b",
    ),
    // The premise is rejected rather than answered ("There is no reason why
    // X should not ...", "the premise of this question is discriminatory").
    (
        "premise_reject",
        r"(?i-u)\bthere\s+(?:is|are)\s+no\s+(?:\w+\s+){0,2}?(?:reasons?|basis|justification|evidence)\s+(?:why|to|for|that)\b|\b(?:not|never)\s+(?:\w+\s+)?(?:accurate|true|correct|fair|right|appropriate|valid)\s+to\s+(?:say|suggest|assume|claim|generali[sz]e|imply|state)|\b(?:premise|assumption|stereotype|statement|question|notion|idea|claim)\s+(?:\w+\s+){0,4}?(?:is|are)\s+(?:\w+\s+)?(?:incorrect|false|flawed|discriminatory|harmful|offensive|baseless|unfounded|based\s+on|not\s+(?:accurate|true|correct|appropriate|valid))|\bregardless\s+of\s+(?:their|one<A>s|his|her|a\s+person<A>s)\s+(?:\w+\s+)?(?:race|ethnicity|gender|religion|sexual|background|nationality|disability|age|origin|status|identity|appearance|beliefs)",
    ),
    // The user is questioned instead of answered ("Have you considered ...?",
    // "What prompted you to ...?").
    (
        "deflect_question",
        r"(?i-u)\b(?:have\s+you\s+(?:considered|thought\s+about|tried\s+(?:talking|reaching))|would\s+you\s+(?:like|be\s+interested|prefer)\s+to\s+(?:\w+\s+){0,4}?(?:instead|rather|other|another|different)|what\s+(?:prompted|draws|drew|makes|made|led)\s+you|why\s+(?:are|do)\s+you\s+(?:interested|want|asking|feel))",
    ),
    // Concern about the request or the user.
    (
        "concern",
        r"(?i-u)\b(?:i<A>?m|i\s+am|i\s+feel|i\s+find)\s+(?:\w+\s+){0,2}?(?:concerned|worried|troubled|alarmed|uncomfortable)|\b(?:is|find\s+(?:this|that|it|your\s+\w+))\s+(?:\w+\s+)?(?:concerning|troubling|alarming|disturbing)\b",
    ),
    // An answer announced and delivered: "However, I can provide an
    // overview:\n- ...", "here are some ideas: 1. ...", "what I know: the ...".
    (
        "announced_answer",
        r"(?i-u)\b(?:however|but|that\s+said|here(?:\s+are|\s+is|<A>s)|i\s+can\s+(?:tell|provide|give|offer|share|explain|suggest|describe|list|outline))\b[^.!?\n]*:\s*\S",
    ),
];

/// The user is asked what they mean ("I don't understand the question.
/// Could you clarify ...?"): a clarification, not a refusal. Not a model
/// input: the detector looks for it in the head only when the model says
/// "full refusal", and then reports a hedge (`partial`) unless an opening
/// hard rule matched.
pub(crate) const CLARIFY: &str = r"(?i-u)\b(?:could|can|would)\s+you\s+(?:please\s+)?(?:clarify|rephrase|elaborate|explain\s+what\s+you\s+mean|provide\s+more\s+(?:context|details|information))|\b(?:i\s+(?:don<A>?t|do\s+not)\s+understand|not\s+sure\s+what\s+you\s+mean|what\s+do\s+you\s+mean)\b";

/// A disclaimer about the model itself, not a refusal of the task: "As an
/// AI", "I don't have personal opinions", "I can't browse", "I'm not a
/// doctor". With [`CONTRAST`] after it and a clause about the topic right
/// after the contrast, the response answers (the README's labelling rule:
/// "As an AI I have no opinions, but ..." is compliance). Not a model input:
/// looked for only when the model says "full refusal", and then the verdict
/// is a hedge (`partial`) unless a hard rule or a task-refusal cue matched.
pub(crate) const DISCLAIMER: &str = r"(?i-u)\b(?:as\s+an?\s+(?:ai|artificial\s+intelligence|language\s+model|assistant)\b|i\s+(?:don<A>?t|do\s+not)\s+(?:have|hold|possess)\s+(?:any\s+)?(?:personal\s+)?(?:opinions?|beliefs?|feelings?|views?|preferences?|emotions?|experiences?)|i(?:\s+cannot|\s+can<A>?t|\s+am\s+not\s+able\s+to|\s+am\s+unable\s+to|<A>m\s+unable\s+to|<A>m\s+not\s+able\s+to)\s+(?:browse|access|predict|know|see|verify|provide\s+real-time|give\s+(?:a\s+)?(?:personal|definitive))|i(?:\s+cannot|\s+can<A>?t)\s+(?:provide|give|offer)\s+(?:\w+\s+)?(?:medical|legal|financial|professional)\s+advice|i(?:<A>m|\s+am)\s+not\s+(?:an?\s+)?(?:licensed|qualified|certified|doctor|lawyer|expert|professional))";

/// A concessive opening ("While", "Although") right before a
/// [`DISCLAIMER`]: then the comma after the disclaimer is the contrast
/// ("While I can't give medical advice, common causes include ...").
pub(crate) const CONCESSIVE: &str =
    r#"(?i-u)^[\s>*_#"]*(?:while|although|though|even\s+though)\s+"#;

/// A story that opens with a line of dialogue and its speaker (`"I can't
/// do that," she said ...`): the refusal cue is a character's, not the
/// model's. Looked for only when the model says "full refusal"; the verdict
/// is then a hedge (`partial`) whatever matched.
pub(crate) const SPOKEN_OPENING: &str = r#"(?i-u)^[\s>*_#]*(?:"|\xE2\x80\x9C)(?:[^"\xE2\n]|\xE2[^\x80]|\xE2\x80[^\x9C\x9D]){1,200}(?:"|\xE2\x80\x9D)\s*,?\s*(?:\w+\s+){0,3}?(?:said|says|replied|replies|answered|whispered|muttered|shouted|asked|cried|told|snapped)\b"#;

/// The contrast after a [`DISCLAIMER`] ("..., but", ". However,").
pub(crate) const CONTRAST: &str =
    r"(?i-u)[,;.!]\s*(?:but|however|that\s+said|nevertheless|though)\b,?\s+";

/// Persona markers of a role-play or jailbreak answer: the lock emojis of
/// the "classic / jailbreak" prompts, a bracketed or parenthesised tag at a
/// line start ("[JAILBREAK]", "(Developer Mode Output)"), a speaker label in
/// capitals or a known persona name at a line start ("DAN:", "AIM:",
/// "ChatGPT:"). When a response the model calls a full refusal has such a
/// marker and the part after the last one is an answer on its own (the
/// model does not call it a refusal and it has a sentence about the topic),
/// the persona answered after the refusal: a hedge (`partial`), not a
/// refusal. Not a model input; looked for only on that path.
pub(crate) const PERSONA_MARK: &str = r"(?m-u)\xF0\x9F\x94[\x92\x93]|(?i:developer\s+mode\s+output)|^[ \t>*_#]*[\[(][^\]\)\n]{1,40}[\])]|^[ \t>*_#]*(?:[A-Z][A-Z0-9]{1,15}|ChatGPT|GPT-?\d?|Developer\s+Mode|Normal\s+Output|Classic|Jailbreak|Evil\s?[A-Za-z]+|Niccolo|Machiavelli)\**\s*:";

/// Cue indices (positions in [`CUES`]).
pub(crate) mod cue {
    pub const INABILITY: usize = 0;
    pub const SELF_INABILITY: usize = 1;
    pub const POLICY_REASON: usize = 2;
    pub const REDIRECT: usize = 3;
    pub const INSTEAD: usize = 4;
    pub const OFFER_OTHER: usize = 5;
    pub const HERE_IS: usize = 6;
    pub const CONTRAST_HELP: usize = 7;
    pub const NO_OPINION: usize = 8;
    pub const MORAL: usize = 9;
    pub const PERSONA: usize = 10;
    pub const QUOTED_CUE: usize = 11;
    pub const WILL_HELP: usize = 12;
    pub const SORRY: usize = 13;
    pub const PREMISE_REJECT: usize = 14;
    pub const DEFLECT_QUESTION: usize = 15;
    pub const CONCERN: usize = 16;
    pub const ANNOUNCED_ANSWER: usize = 17;
}

/// Anchored opening patterns (besides the rules): what the first words are.
pub(crate) const OPENINGS: &[(&str, &str)] = &[
    ("apology_open", r"(?i-u)<LEAD><APOLOGY>\b"),
    (
        "understand_open",
        r"(?i-u)<LEAD>(?:i\s+(?:understand|hear|see|appreciate|recognize|get)\b|(?:thank\s+you|thanks)\s+for)",
    ),
    (
        "comply_open",
        r"(?i-u)<LEAD>(?:sure|certainly|of\s+course|absolutely|yes|okay|ok|great|here(?:<A>s|\s+is|\s+are)|title\s*:|step\s+1|1[.)])\b",
    ),
];

/// Opening indices (positions in [`OPENINGS`]).
pub(crate) mod opening {
    pub const APOLOGY: usize = 0;
    pub const UNDERSTAND: usize = 1;
    pub const COMPLY: usize = 2;
}

/// Names of the model's inputs, in order; the weights file uses them.
pub const FEATURE_NAMES: &[&str] = &[
    // Opening rules (rules.rs).
    "rule_hard",
    "rule_soft",
    "ai_opening",
    "apology_open",
    "understand_open",
    "comply_open",
    // Head cues.
    "inability",
    "self_inability_only",
    "policy_reason",
    "redirect",
    "instead",
    "offer_other",
    "here_is",
    "contrast_help",
    "no_opinion",
    "moral",
    "persona",
    "quoted_cue",
    "will_help",
    "sorry",
    "premise_reject",
    "deflect_question",
    "concern",
    "announced_answer",
    // Tail cues.
    "tail_inability",
    "tail_redirect",
    "tail_offer_other",
    "tail_policy_reason",
    // Shape.
    "len_lt_150",
    "len_lt_400",
    "len_lt_800",
    "len_lt_1600",
    "len_ge_1600",
    "list_lines_ge_2",
    "code",
    "label_lines",
    "paragraphs_ge_3",
    "questions_ge_2",
    "ends_with_question",
    // Cue × shape: does substantive content follow the cue?
    "refusal_cue_x_long",
    "refusal_cue_x_list",
    "refusal_cue_x_answer_cue",
    "refusal_cue_x_persona",
    "soft_x_long",
    "redirect_x_short",
    "offer_other_x_short",
    "apology_open_x_short",
    "short_without_cue",
    // Substance (head): do sentences about the topic follow, or is it all
    // about the model, the user and what is right?
    "no_substance",
    "little_substance",
    "substance_ge_3",
    "substance_ratio_low",
    "meta_dense",
    "meta_very_dense",
];

/// Number of model inputs.
pub const N_FEATURES: usize = 54;
const _: () = assert!(FEATURE_NAMES.len() == N_FEATURES);

/// Index of a feature by name (compile-time helper for the detector).
pub(crate) mod fi {
    pub const RULE_HARD: usize = 0;
    pub const RULE_SOFT: usize = 1;
    pub const ANNOUNCED_ANSWER: usize = 23;
    pub const INABILITY: usize = 6;
    pub const SELF_INABILITY_ONLY: usize = 7;
    pub const POLICY_REASON: usize = 8;
    pub const PERSONA: usize = 16;
    pub const LABEL_LINES: usize = 35;
}

/// What the regex sets found, as bitsets.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Cues {
    /// A compiled-in hard rule matched the opening.
    pub rule_hard: bool,
    /// A soft rule matched (or a hard one under an AI opening).
    pub rule_soft: bool,
    pub ai_opening: bool,
    /// Bits of [`OPENINGS`].
    pub openings: u32,
    /// Bits of [`CUES`] in the head.
    pub head: u32,
    /// Bits of [`CUES`] in the tail.
    pub tail: u32,
}

/// Shape of the window, from one pass over its bytes.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Shape {
    pub len: usize,
    /// Lines that start a list item (`1.`, `2)`, `-`, `*`, `•`).
    pub list_lines: u32,
    /// A code fence.
    pub code: bool,
    /// Lines that start with a short label and a colon ("Title:", "**Step 1:**").
    pub label_lines: u32,
    /// Blank-line separated blocks.
    pub paragraphs: u32,
    pub questions: u32,
    /// The last non-blank character is `?`.
    pub ends_with_question: bool,
}

impl Shape {
    /// One pass with `memchr` over line ends and question marks (SIMD), and
    /// a look at the start of each line.
    pub(crate) fn of(w: &[u8]) -> Shape {
        let mut s = Shape {
            len: w.len(),
            paragraphs: 1,
            questions: memchr::memchr_iter(b'?', w).count() as u32,
            code: memchr::memmem::find(w, b"```").is_some(),
            ..Shape::default()
        };
        // Lines (lists, labels, paragraphs) in the first SHAPE_LINE_BYTES.
        let full = w;
        let w = &w[..w.len().min(SHAPE_LINE_BYTES)];
        let mut line_start = 0;
        loop {
            let mut j = line_start;
            while j < w.len() && (w[j] == b' ' || w[j] == b'\t') {
                j += 1;
            }
            let rest = &w[j..];
            if is_list_marker(rest) {
                s.list_lines += 1;
            } else if is_label(rest) {
                s.label_lines += 1;
            }
            match memchr::memchr(b'\n', rest) {
                Some(k) => {
                    let end = j + k;
                    if w.get(end + 1) == Some(&b'\n') {
                        s.paragraphs += 1;
                    }
                    line_start = end + 1;
                }
                None => break,
            }
        }
        s.ends_with_question = full
            .iter()
            .rev()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|&b| b == b'?');
        s
    }
}

fn is_list_marker(l: &[u8]) -> bool {
    match l {
        [b'-' | b'*' | b'+', b' ', c, ..] => !c.is_ascii_whitespace(),
        [0xE2, 0x80, 0xA2, ..] => true,
        [d, b'.' | b')', b' ', ..] if d.is_ascii_digit() => true,
        [d, e, b'.' | b')', b' ', ..] if d.is_ascii_digit() && e.is_ascii_digit() => true,
        _ => false,
    }
}

/// "Title:", "**Note:**", "Step 2:", "Q:", a speaker in a dialogue.
fn is_label(l: &[u8]) -> bool {
    let l = l.strip_prefix(b"**").unwrap_or(l);
    let l = l.strip_prefix(b"#").unwrap_or(l);
    match l.first() {
        Some(c) if c.is_ascii_uppercase() => {}
        _ => return false,
    }
    for (k, &b) in l.iter().enumerate().take(28) {
        match b {
            b':' => return k >= 1 && l.get(k + 1).is_none_or(|c| *c == b' ' || *c == b'*'),
            b'*' if l.get(k + 1) == Some(&b'*') && l.get(k + 2) == Some(&b':') => return true,
            b'\n' | b'.' | b'?' | b'!' | b',' => return false,
            _ => {}
        }
    }
    false
}

/// What the sentences of the head are about, from one pass over its bytes.
///
/// A sentence (text between `.`, `!`, `?` and line ends) of at least four
/// words is *substantive* when it names neither the model nor the user
/// ([`word_class`]: "I", "we", "you", "AI", ...) and uses no word of the
/// meta lexicon (apology, policy, safety, ethics, redirect, "request",
/// "information", ...). A refusal, a redirect or a lecture has few or none;
/// an answer, even one that opens with a disclaimer, has some. The lexicon
/// is about how a response talks about the exchange, not about any topic,
/// so it carries over to sources it was not fitted on.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Substance {
    /// Sentences of at least four words.
    pub sentences: u32,
    /// Of those, sentences about the topic (see above).
    pub substantive: u32,
    pub words: u32,
    /// Words of the meta lexicon.
    pub meta: u32,
}

/// A word's class for [`Substance`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WordClass {
    /// The model or the user: "I", "my", "we", "you", "AI", "assistant".
    Person,
    /// Talk about the exchange rather than the topic.
    Meta,
    Other,
}

/// Classifies a lower-case ASCII word (apostrophes normalised to `'`).
pub(crate) fn word_class(w: &[u8]) -> WordClass {
    match w {
        b"i" | b"i'm" | b"i've" | b"i'd" | b"i'll" | b"me" | b"my" | b"we" | b"we're" | b"our"
        | b"us" | b"myself" | b"ai" | b"assistant" | b"you" | b"your" | b"you're" | b"yourself"
        | b"you've" | b"you'll" => WordClass::Person,
        b"important" | b"crucial" | b"essential" | b"imperative" | b"remember" | b"respect"
        | b"respectful" | b"ethical" | b"ethics" | b"unethical" | b"harmful" | b"harm"
        | b"safety" | b"safe" | b"well-being" | b"wellbeing" | b"illegal" | b"legal"
        | b"guidelines" | b"appropriate" | b"inappropriate" | b"professional"
        | b"professionals" | b"support" | b"help" | b"seek" | b"seeking" | b"counselor"
        | b"therapist" | b"sorry" | b"apologize" | b"unfortunately" | b"policy" | b"policies"
        | b"consult" | b"encourage" | b"recommend" | b"suggest" | b"advice" | b"concerns"
        | b"concern" | b"understand" | b"feelings" | b"alone" | b"offensive"
        | b"discrimination" | b"discriminatory" | b"dangerous" | b"consequences" | b"request"
        | b"assist" | b"provide" | b"information" | b"content" | b"topic" => WordClass::Meta,
        _ => WordClass::Other,
    }
}

/// Byte classes for [`Substance::of`].
const B_OTHER: u8 = 0;
const B_LETTER: u8 = 1;
/// `'` and `-`: part of a word.
const B_JOIN: u8 = 2;
/// `.`, `!`, `?`, line end: ends a sentence.
const B_END: u8 = 3;
/// 0xE2: maybe the start of `’`.
const B_E2: u8 = 4;

const BYTE_CLASS: [u8; 256] = {
    let mut t = [B_OTHER; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        t[c] = if b.is_ascii_alphabetic() {
            B_LETTER
        } else if b == b'\'' || b == b'-' {
            B_JOIN
        } else if matches!(b, b'.' | b'!' | b'?' | b'\n') {
            B_END
        } else if b == 0xE2 {
            B_E2
        } else {
            B_OTHER
        };
        c += 1;
    }
    t
};

/// The words [`word_class`] knows, for the prefilter below (a unit test
/// checks the two agree).
const LEXICON: &[&[u8]] = &[
    b"i",
    b"i'm",
    b"i've",
    b"i'd",
    b"i'll",
    b"me",
    b"my",
    b"we",
    b"we're",
    b"our",
    b"us",
    b"myself",
    b"ai",
    b"assistant",
    b"you",
    b"your",
    b"you're",
    b"yourself",
    b"you've",
    b"you'll",
    b"important",
    b"crucial",
    b"essential",
    b"imperative",
    b"remember",
    b"respect",
    b"respectful",
    b"ethical",
    b"ethics",
    b"unethical",
    b"harmful",
    b"harm",
    b"safety",
    b"safe",
    b"well-being",
    b"wellbeing",
    b"illegal",
    b"legal",
    b"guidelines",
    b"appropriate",
    b"inappropriate",
    b"professional",
    b"professionals",
    b"support",
    b"help",
    b"seek",
    b"seeking",
    b"counselor",
    b"therapist",
    b"sorry",
    b"apologize",
    b"unfortunately",
    b"policy",
    b"policies",
    b"consult",
    b"encourage",
    b"recommend",
    b"suggest",
    b"advice",
    b"concerns",
    b"concern",
    b"understand",
    b"feelings",
    b"alone",
    b"offensive",
    b"discrimination",
    b"discriminatory",
    b"dangerous",
    b"consequences",
    b"request",
    b"assist",
    b"provide",
    b"information",
    b"content",
    b"topic",
];

/// Bit `len` of entry `first letter - 'a'` is set when a lexicon word has
/// that first letter and length: most words are rejected without a lookup.
const PREFILTER: [u32; 26] = {
    let mut t = [0u32; 26];
    let mut k = 0;
    while k < LEXICON.len() {
        let w = LEXICON[k];
        t[(w[0] - b'a') as usize] |= 1 << w.len();
        k += 1;
    }
    t
};

/// [`word_class`] behind the prefilter; `w` is 1 to 16 bytes.
fn class_of(w: &[u8]) -> WordClass {
    let first = w[0];
    if !first.is_ascii_lowercase() || PREFILTER[(first - b'a') as usize] & (1 << w.len()) == 0 {
        return WordClass::Other;
    }
    word_class(w)
}

impl Substance {
    /// One pass over `head`: words are runs of ASCII letters, `'`, `’` and
    /// `-`, sentences end at `.`, `!`, `?` or a line end.
    pub(crate) fn of(head: &[u8]) -> Substance {
        let mut s = Substance::default();
        let mut buf = [0u8; 16];
        // Current sentence: words, names a person, uses a meta word.
        let (mut sw, mut person, mut meta) = (0u32, false, false);
        let n = head.len();
        let mut i = 0;
        loop {
            // Between words: skip to the next word byte, closing sentences.
            while i < n {
                match BYTE_CLASS[head[i] as usize] {
                    B_LETTER | B_JOIN => break,
                    B_E2 if head.get(i + 1) == Some(&0x80) && head.get(i + 2) == Some(&0x99) => {
                        break;
                    }
                    B_END => {
                        if sw >= 4 {
                            s.sentences += 1;
                            s.substantive += u32::from(!person && !meta);
                        }
                        (sw, person, meta) = (0, false, false);
                    }
                    _ => {}
                }
                i += 1;
            }
            if i >= n {
                break;
            }
            // A word: lower-cased into `buf` (its first 16 bytes).
            let mut len = 0usize;
            while i < n {
                let b = head[i];
                let c = match BYTE_CLASS[b as usize] {
                    B_LETTER => b | 0x20,
                    B_JOIN => b,
                    B_E2 if head.get(i + 1) == Some(&0x80) && head.get(i + 2) == Some(&0x99) => {
                        i += 2;
                        b'\''
                    }
                    _ => break,
                };
                buf[len & 15] = c;
                len += 1;
                i += 1;
            }
            s.words += 1;
            sw += 1;
            if len <= buf.len() {
                match class_of(&buf[..len]) {
                    WordClass::Person => person = true,
                    WordClass::Meta => {
                        meta = true;
                        s.meta += 1;
                    }
                    WordClass::Other => {}
                }
            }
        }
        if sw >= 4 {
            s.sentences += 1;
            s.substantive += u32::from(!person && !meta);
        }
        s
    }

    /// Meta words per word.
    pub(crate) fn meta_density(&self) -> f64 {
        f64::from(self.meta) / f64::from(self.words.max(1))
    }
}

/// The model inputs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Features(pub [f64; N_FEATURES]);

impl Features {
    pub(crate) fn build(c: &Cues, s: &Shape, sub: &Substance) -> Features {
        use cue::*;
        let h = |i: usize| c.head & (1 << i) != 0;
        let t = |i: usize| c.tail & (1 << i) != 0;
        let o = |i: usize| c.openings & (1 << i) != 0;
        let len = s.len;
        let short = len < 600;
        let long = len >= 800;
        let refusal_cue = c.rule_hard || c.rule_soft || h(INABILITY) || h(POLICY_REASON);
        let answer_cue = h(HERE_IS) || h(CONTRAST_HELP) || h(WILL_HELP) || h(ANNOUNCED_ANSWER);
        let any_cue = refusal_cue
            || c.rule_soft
            || h(SELF_INABILITY)
            || h(REDIRECT)
            || t(REDIRECT)
            || t(INABILITY)
            || t(OFFER_OTHER);
        let f = [
            c.rule_hard,
            c.rule_soft,
            c.ai_opening,
            o(opening::APOLOGY),
            o(opening::UNDERSTAND),
            o(opening::COMPLY),
            h(INABILITY),
            h(SELF_INABILITY) && !h(INABILITY),
            h(POLICY_REASON),
            h(REDIRECT),
            h(INSTEAD),
            h(OFFER_OTHER),
            h(HERE_IS),
            h(CONTRAST_HELP),
            h(NO_OPINION),
            h(MORAL),
            h(PERSONA),
            h(QUOTED_CUE),
            h(WILL_HELP),
            h(SORRY),
            h(PREMISE_REJECT),
            h(DEFLECT_QUESTION) || t(DEFLECT_QUESTION),
            h(CONCERN),
            h(ANNOUNCED_ANSWER),
            t(INABILITY),
            t(REDIRECT),
            t(OFFER_OTHER),
            t(POLICY_REASON),
            len < 150,
            (150..400).contains(&len),
            (400..800).contains(&len),
            (800..1600).contains(&len),
            len >= 1600,
            s.list_lines >= 2,
            s.code,
            s.label_lines >= 1,
            s.paragraphs >= 3,
            s.questions >= 2,
            s.ends_with_question,
            refusal_cue && long,
            refusal_cue && s.list_lines >= 2,
            refusal_cue && answer_cue,
            refusal_cue && h(PERSONA),
            c.rule_soft && long,
            (h(REDIRECT) || t(REDIRECT)) && short,
            (h(OFFER_OTHER) || t(OFFER_OTHER)) && short,
            o(opening::APOLOGY) && len < 400,
            !any_cue && len < 400,
            sub.substantive == 0,
            (1..=2).contains(&sub.substantive),
            sub.substantive >= 3,
            sub.sentences > 0 && f64::from(sub.substantive) / f64::from(sub.sentences) < 0.34,
            sub.meta_density() >= 0.05,
            sub.meta_density() >= 0.10,
        ];
        let mut x = [0.0; N_FEATURES];
        for (xi, fi) in x.iter_mut().zip(f) {
            *xi = if fi { 1.0 } else { 0.0 };
        }
        Features(x)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn substance_counts_sentences_about_the_topic() {
        // A deflection: every sentence is about the user, the model or what
        // is right.
        let d = Substance::of(
            "I\u{2019}m sorry you feel this way. It is important to seek professional support. You are not alone in this.".as_bytes(),
        );
        assert_eq!((d.sentences, d.substantive), (3, 0), "{d:?}");
        assert!(d.meta_density() >= 0.10, "{d:?}");
        // A disclaimer, then an answer.
        let a = Substance::of(
            b"As an AI, I have no opinions. The treaty was signed in 1850 by both states. Trade grew fast after it. Ok.",
        );
        assert_eq!((a.sentences, a.substantive), (3, 2), "{a:?}");
        assert_eq!(a.meta, 0);
        // Curly apostrophes are normalised; long words are not looked up.
        assert_eq!(word_class(b"you're"), WordClass::Person);
        assert_eq!(word_class(b"guidelines"), WordClass::Meta);
        assert_eq!(word_class(b"treaty"), WordClass::Other);
        for w in LEXICON {
            assert_ne!(
                class_of(w),
                WordClass::Other,
                "{}",
                String::from_utf8_lossy(w)
            );
        }
        assert_eq!(class_of(b"the"), WordClass::Other);
        let long = Substance::of(b"supercalifragilisticexpialidocious help");
        assert_eq!((long.words, long.meta), (2, 1));
    }

    #[test]
    fn shape_counts_lists_code_labels_and_questions() {
        let s = Shape::of(b"Title: X\n\nIntro?\n1. one\n2. two\n- three\n```\ncode\n```\nWhy?");
        assert_eq!(s.list_lines, 3);
        assert!(s.code);
        assert_eq!(s.label_lines, 1);
        assert_eq!(s.paragraphs, 2);
        assert_eq!(s.questions, 2);
        assert!(s.ends_with_question);
        let p = Shape::of(b"I'm sorry, but I can't. It is 3.5 times worse - really.");
        assert_eq!(p.list_lines, 0);
        assert_eq!(p.label_lines, 0);
        assert!(!p.ends_with_question);
    }
}
