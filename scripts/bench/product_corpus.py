#!/usr/bin/env python3
"""Synthetic e-commerce catalog texts: product titles and long descriptions in several languages.

Deterministic for a seed. Used by the embedding benchmark (`make_corpus`, JSONL with `id` and
`text`) and by the embedding parity fixture (`sample_texts`).

    scripts/bench/product_corpus.py --n 3200 --seed 7 > /tmp/products.jsonl
"""
import argparse
import json
import random

BRANDS = ["Acme", "Nordkap", "Solvik", "Hanami", "Lumio", "Kestrel", "Vantage", "Bellwood",
          "Orbis", "Tessera", "Mistral Outdoor", "Hoshino", "Casa Verde", "Ferro & Sons"]
PRODUCTS = {
    "en": ["running shoes", "rain jacket", "wireless earbuds", "espresso machine", "yoga mat",
           "backpack", "smart watch", "cast iron skillet", "LED desk lamp", "merino wool socks",
           "phone case", "air fryer", "hiking boots", "bluetooth speaker", "office chair"],
    "de": ["Laufschuhe", "Regenjacke", "kabellose Kopfhörer", "Espressomaschine", "Yogamatte",
           "Rucksack", "Wanderschuhe", "Schreibtischlampe", "Bürostuhl", "Heißluftfritteuse"],
    "fr": ["chaussures de course", "veste imperméable", "écouteurs sans fil", "machine à expresso",
           "sac à dos", "lampe de bureau", "chaise de bureau", "friteuse à air"],
    "es": ["zapatillas de running", "chaqueta impermeable", "auriculares inalámbricos",
           "cafetera espresso", "mochila", "lámpara de escritorio", "silla de oficina"],
    "ja": ["ランニングシューズ", "レインジャケット", "ワイヤレスイヤホン", "エスプレッソマシン",
           "リュックサック", "デスクライト", "オフィスチェア"],
    "zh": ["跑步鞋", "防水夹克", "无线耳机", "咖啡机", "双肩包", "台灯", "办公椅"],
}
ADJ = {
    "en": ["waterproof", "lightweight", "premium", "women's", "men's", "kids'", "compact",
           "ergonomic", "breathable", "noise-cancelling", "stainless steel", "vegan leather"],
    "de": ["wasserdicht", "leicht", "Damen", "Herren", "Kinder", "ergonomisch", "atmungsaktiv"],
    "fr": ["imperméable", "léger", "femme", "homme", "enfant", "ergonomique", "respirant"],
    "es": ["impermeable", "ligero", "mujer", "hombre", "niños", "ergonómico", "transpirable"],
    "ja": ["防水", "軽量", "レディース", "メンズ", "キッズ", "人間工学"],
    "zh": ["防水", "轻便", "女款", "男款", "儿童", "人体工学"],
}
COLORS = ["black", "navy", "olive", "red", "white", "sand", "graphite", "teal", "schwarz",
          "bleu marine", "rojo", "黒", "白色"]
SENTENCES = {
    "en": [
        "Designed for everyday use, it combines durable materials with a clean, modern look.",
        "The {adj} construction keeps you comfortable from the morning commute to the evening run.",
        "Machine washable at 30°C; do not tumble dry.",
        "Includes a 2-year warranty and free returns within 30 days.",
        "Weight: {w} g. Dimensions: {a} x {b} x {c} cm.",
        "Customers love the fit: true to size, with plenty of room in the toe box.",
        "Battery life up to {h} hours; USB-C fast charging gives 2 hours of play in 10 minutes.",
        "Made from {p}% recycled polyester and certified to OEKO-TEX Standard 100.",
        "Pair it with our matching accessories for a complete set.",
        "Note: colours may vary slightly from the photos due to screen settings.",
        "Ideal for hiking, travel, the gym or the office.",
        "Ships in plastic-free packaging from our warehouse in Rotterdam.",
    ],
    "de": [
        "Für den täglichen Einsatz entwickelt, vereint es robuste Materialien mit modernem Design.",
        "Die Sohle bietet hervorragenden Grip auf nassem Untergrund.",
        "Maschinenwaschbar bei 30 °C, nicht im Trockner trocknen.",
        "Inklusive 2 Jahre Garantie und kostenloser Rückversand innerhalb von 30 Tagen.",
        "Gewicht: {w} g. Maße: {a} x {b} x {c} cm.",
        "Aus {p} % recyceltem Polyester, zertifiziert nach OEKO-TEX Standard 100.",
    ],
    "fr": [
        "Conçu pour un usage quotidien, il associe des matériaux durables à un design moderne.",
        "Lavable en machine à 30 °C, ne pas sécher en machine.",
        "Garantie de 2 ans et retours gratuits sous 30 jours.",
        "Poids : {w} g. Dimensions : {a} x {b} x {c} cm.",
        "Fabriqué à partir de {p} % de polyester recyclé.",
    ],
    "es": [
        "Diseñado para el uso diario, combina materiales duraderos con un diseño moderno.",
        "Lavable a máquina a 30 °C; no usar secadora.",
        "Incluye 2 años de garantía y devoluciones gratuitas durante 30 días.",
        "Peso: {w} g. Dimensiones: {a} x {b} x {c} cm.",
    ],
    "ja": [
        "毎日使えるように設計され、丈夫な素材とモダンなデザインを兼ね備えています。",
        "30℃で洗濯機洗いが可能です。タンブル乾燥はお避けください。",
        "2年間の保証と30日以内の返品無料が含まれます。",
        "重量：{w} g。サイズ：{a} x {b} x {c} cm。",
    ],
    "zh": [
        "专为日常使用设计，结合耐用材料与现代外观。",
        "可在30°C机洗，请勿烘干。",
        "享受两年保修，30天内免费退货。",
        "重量：{w} 克。尺寸：{a} x {b} x {c} 厘米。",
    ],
}
LANG_WEIGHTS = [("en", 6), ("de", 2), ("fr", 1), ("es", 1), ("ja", 1), ("zh", 1)]
EMOJI = ["🔥", "✨", "👟", "☔", "🎧", "✅", "⭐⭐⭐⭐⭐", "🇩🇪", "❤️"]


def pick_lang(rng):
    langs, weights = zip(*LANG_WEIGHTS)
    return rng.choices(langs, weights)[0]


def title(rng, lang=None):
    lang = lang or pick_lang(rng)
    parts = [rng.choice(BRANDS), rng.choice(ADJ[lang]), rng.choice(PRODUCTS[lang])]
    if rng.random() < 0.5:
        parts.append(rng.choice(COLORS))
    if rng.random() < 0.4:
        parts.append(rng.choice(["Size 42", "EU 38", "XL", "10 x 20 cm", "1.5 L", "2-pack", "64GB"]))
    if rng.random() < 0.1:
        parts.append(rng.choice(EMOJI))
    return " ".join(parts)


def description(rng, lang=None, sentences=None):
    lang = lang or pick_lang(rng)
    n = sentences or rng.randint(3, 14)
    out = [title(rng, lang) + "."]
    for _ in range(n):
        s = rng.choice(SENTENCES[lang])
        out.append(s.format(adj=rng.choice(ADJ["en"]), w=rng.randint(80, 2400),
                            a=rng.randint(5, 80), b=rng.randint(5, 80), c=rng.randint(1, 40),
                            h=rng.randint(6, 60), p=rng.randint(20, 100)))
    return " ".join(out)


def make_corpus(n, seed):
    """n catalog rows: 55% titles, 45% descriptions of 3–14 sentences (≤ 256 tokens)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        text = title(rng) if rng.random() < 0.55 else description(rng)
        rows.append({"id": f"p{i:06d}", "text": text})
    return rows


def sample_texts(seed):
    """Texts for the parity fixture: titles, descriptions past 256 tokens, scripts, emoji, edge cases."""
    rng = random.Random(seed)
    texts = ["", " ", "a", "where is my order", "Laufschuhe Damen wasserdicht", "返品したいです",
             "退货流程是什么？", "¿Dónde está mi pedido?", "Où est ma commande ?", "Где мой заказ?",
             "طلبي لم يصل بعد", "मेरा ऑर्डर कहाँ है", "주문을 취소하고 싶어요", "Siparişim nerede?",
             "Ποιο είναι το μέγεθος;", "สั่งซื้อแล้วยังไม่ได้รับ", "👟👟 running shoes 🔥🔥",
             "❤️‍🔥 deal of the day ✨", "iPhone 15 Pro Max 256GB — Titan Schwarz", "size: 42½ (EU)",
             "   leading and trailing spaces   ", "tabs\tand\nnewlines\n\nhere",
             "ALL CAPS TITLE FOR A USB-C CABLE 2M", "Café crème – 500 g, naïve façade",
             "x" * 300, "1234567890 0987654321 3.14159 -42 1e10", "[CLS] [SEP] [MASK] [PAD]",
             "<b>HTML</b> &amp; entities &lt;br&gt;", "https://shop.example.com/p/12345?ref=ad",
             "a, b, c; d: e! f? g... h---i"]
    for _ in range(110):
        texts.append(title(rng))
    for _ in range(40):
        texts.append(description(rng))
    for lang in ["en", "de", "fr", "es", "ja", "zh"]:
        for _ in range(4):
            texts.append(description(rng, lang, sentences=rng.randint(20, 40)))  # past 256 tokens
    return texts


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=3200)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    for row in make_corpus(args.n, args.seed):
        print(json.dumps(row, ensure_ascii=False))


if __name__ == "__main__":
    main()
